// The multiplexer's frame reader, worker and client alike: one coroutine per session reads the
// data connection, checks every frame against docs/protocol.md (section 8.4), with flood limits
// on cheap frames, and hands DATA payloads on as their bytes arrive.
// Invariant: a frame is checked before any of its payload is used; a violation sends ERROR (best
// effort) and ends the session; the buffer keeps at most an unfinished header or control frame.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

#include "shared/log/printable.hpp"
#include "shared/net/mux_session.hpp"
#include "shared/net/mux_stream.hpp"
#include "shared/protocol/messages.hpp"

namespace culvert::shared::net {

namespace {

constexpr std::int64_t max_credit = 0x7fffffff;
// Flood limits: cheap frames a peer may send per window of arrival times (note_frame_arrival).
constexpr std::chrono::seconds flood_window{1};
constexpr std::uint32_t max_stale_frames_per_second = 10000;

}  // namespace

asio::awaitable<void> mux_session::read_loop() {
  auto self = shared_from_this();
  // Left uninitialised: a page costs memory only once a read has written to it.
  read_buffer_.reset(new std::uint8_t[read_buffer_size]);
  std::uint8_t* const buffer = read_buffer_.get();
  std::size_t& begin = read_begin_;
  std::size_t& end = read_end_;
  while (open_) {
    if (incoming_.left > 0 && begin == end && incoming_can_splice()) {
      if (!co_await splice_incoming()) co_return;
      continue;
    }
    // A bulk stream's next DATA payload should stay in the socket for splice: read its header
    // alone. Otherwise read as much as fits; many small frames come in one read.
    const std::size_t have = end - begin;
    const std::size_t limit = bulk_in_ && incoming_.left == 0 && have < proto::header_size
                                  ? proto::header_size - have
                                  : read_buffer_size - end;
    auto [ec, n] = co_await connection_.read_some(asio::buffer(buffer + end, limit));
    if (!open_) co_return;
    if (ec) {
      close(ec == asio::error::eof ? "closed by peer" : "connection lost: " + ec.message());
      co_return;
    }
    last_received_ = clock_type::now();
    end += n;
    if (!parse_buffered()) co_return;
    if (begin == end) {
      begin = end = 0;
    } else if (read_buffer_size - end < proto::header_size + proto::max_control_payload) {
      std::memmove(buffer, buffer + begin, end - begin);  // a partial header or control frame
      end -= begin;
      begin = 0;
    }
  }
}

// Handles every complete frame in the read buffer. A DATA payload is handed on as its bytes
// arrive, so it never waits for the rest of its frame. Returns false once the session ended.
bool mux_session::parse_buffered() {
  std::uint8_t* const buffer = read_buffer_.get();
  std::size_t& begin = read_begin_;
  const std::size_t end = read_end_;
  while (open_) {
    if (incoming_.left > 0) {
      if (begin == end) return true;
      const std::size_t k = std::min<std::size_t>(incoming_.left, end - begin);
      deliver_incoming(std::span(buffer + begin, k));
      begin += k;
      incoming_.left -= std::uint32_t(k);
      if (incoming_.left == 0) end_incoming();
      continue;
    }
    if (end - begin < proto::header_size) return true;
    auto decoded = proto::decode_header(
        std::span<const std::uint8_t, proto::header_size>(buffer + begin, proto::header_size));
    if (auto* error = std::get_if<proto::decode_error>(&decoded)) {
      protocol_violation(std::string(proto::to_string(*error)));
      return false;
    }
    const auto& h = std::get<proto::frame_header>(decoded);
    note_frame_arrival();
    if (h.type == proto::frame_type::data) {
      if (!begin_incoming(h)) return false;
      begin += proto::header_size;
      if (h.length == 0) end_incoming();
      continue;
    }
    if (end - begin < proto::header_size + h.length) return true;
    if (!handle_frame(h, std::span(buffer + begin + proto::header_size, h.length))) return false;
    begin += proto::header_size + h.length;
  }
  return false;
}

// Flood limits count per second of arrival (the time of the read that brought the frame).
void mux_session::note_frame_arrival() {
  if (last_received_ - flood_window_start_ >= flood_window) {
    flood_window_start_ = last_received_;
    pings_in_window_ = 0;
    stale_frames_in_window_ = 0;
  }
}

bool mux_session::handle_frame(const proto::frame_header& h,
                               std::span<const std::uint8_t> payload) {
  switch (h.type) {
    case proto::frame_type::window:
      return handle_window(h.stream_id, proto::load_u32(payload.data()));
    case proto::frame_type::open:
      return handle_open(h.stream_id, payload);
    case proto::frame_type::reset:
      handle_reset(h.stream_id);
      return open_;
    case proto::frame_type::ping:
      handle_ping(h, payload);
      return open_;
    case proto::frame_type::error: {
      auto e = proto::decode_error_message(payload);
      // The peer's text ends up in a log or the client's terminal: escaped here, where it enters.
      close("peer reported an error: " +
            (e ? shared::log::printable(e->message, 512) : std::string("(unreadable)")));
      return false;
    }
    default:
      protocol_violation(std::string(proto::to_string(h.type)) + " frame on a data connection");
      return false;
  }
}

// A DATA header: every check the whole frame needs, before any of its payload is handed on.
bool mux_session::begin_incoming(const proto::frame_header& h) {
  const bool fin = h.flags & proto::flags::fin;
  auto it = streams_.find(h.stream_id);
  if (it == streams_.end()) {
    if (h.stream_id > last_stream_id_) {
      protocol_violation("DATA on a stream never opened");
      return false;
    }
    // The stream ended here while the peer was still sending: drop, but bound how often.
    if (++stale_frames_in_window_ > max_stale_frames_per_second) {
      protocol_violation("flood of frames for closed streams");
      return false;
    }
    incoming_ = {nullptr, h.length, false};
    return true;
  }
  stream_ptr s = it->second;
  if (s->peer_fin) {
    protocol_violation("DATA after FIN");
    return false;
  }
  if (h.length == 0 && !fin) {
    protocol_violation("empty DATA frame without FIN");
    return false;
  }
  if (std::int64_t(h.length) > s->recv_credit) {
    protocol_violation("DATA beyond the stream's window");
    return false;
  }
  s->recv_credit -= std::int64_t(h.length);
  relayed_since_tick_ = true;
  bulk_in_ = splice_allowed_ && h.length >= bulk_read_bytes && !s->observer;
  incoming_ = {std::move(s), h.length, fin};
  return true;
}

void mux_session::end_incoming() {
  const stream_ptr s = std::move(incoming_.stream);
  const bool fin = incoming_.fin;
  incoming_ = {};
  if (!s) return;
  release_rx_pipe_if_empty(*s);
  if (fin && !s->closed) {
    s->peer_fin = true;
    start_socket_writer(s);
  }
}

bool mux_session::handle_window(std::uint32_t id, std::uint32_t increment) {
  if (increment == 0 || increment > max_credit) {
    protocol_violation("WINDOW increment of 0 or above 2^31-1");
    return false;
  }
  auto it = streams_.find(id);
  if (it == streams_.end()) {
    if (id > last_stream_id_) {
      protocol_violation("WINDOW on a stream never opened");
      return false;
    }
    if (++stale_frames_in_window_ > max_stale_frames_per_second) {
      protocol_violation("flood of frames for closed streams");
      return false;
    }
    return true;
  }
  auto& s = *it->second;
  if (s.send_credit + increment > max_credit) {
    protocol_violation("WINDOW overflows the stream's credit");
    return false;
  }
  s.send_credit += increment;
  s.from_socket_wake.cancel();
  return true;
}

void mux_session::handle_reset(std::uint32_t id) {
  auto it = streams_.find(id);
  if (it == streams_.end()) {
    if (id > last_stream_id_) return protocol_violation("RESET on a stream never opened");
    if (++stale_frames_in_window_ > max_stale_frames_per_second)
      protocol_violation("flood of frames for closed streams");
    return;
  }
  stream_ptr s = it->second;
  s->aborted = true;
  remove_stream(s, true, "reset by the other side");
}

void mux_session::protocol_violation(const std::string& what) {
  if (!open_) return;
  spdlog::warn("data connection: protocol violation by peer: {}", what);
  // Best effort: tell the peer why, without waiting on a peer that may not read.
  auto frame = proto::encode(proto::error_message{proto::error_code::protocol_error, what});
  // MSG_DONTWAIT: Asio's synchronous write would wait for room, and a hostile peer never reads.
  connection_.try_send_now(frame);
  close("protocol violation: " + what);
}

}  // namespace culvert::shared::net
