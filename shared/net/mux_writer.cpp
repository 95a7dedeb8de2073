// The multiplexer's writer: one coroutine per session gathers queued frames into one writev,
// control frames (WINDOW, PING, OPEN, RESET) ahead of DATA. Worker and client alike.
// Invariant: frames leave in queue order within each queue; a reset stream's queued DATA is
// dropped; a DATA frame's chunk goes back to the pool and its stream is woken once written.
#include <algorithm>
#include <cstring>

#include "shared/net/mux_session.hpp"
#include "shared/net/mux_stream.hpp"

namespace culvert::shared::net {

namespace {

constexpr std::size_t max_gather_frames = 64;
constexpr std::size_t max_gather_bytes = 1024 * 1024;

}  // namespace

void mux_session::wake_writer() {
  writer_wake_.cancel();
}

void mux_session::queue_control(proto::frame_type type, std::uint8_t flags, std::uint32_t stream_id,
                                std::span<const std::uint8_t> payload, bool wake) {
  if (!open_) return;
  out_frame& f = control_queue_.emplace_back();
  proto::encode_header(
      {std::uint32_t(payload.size()), type, flags, stream_id},
      std::span<std::uint8_t, proto::header_size>(f.head.data(), proto::header_size));
  std::memcpy(f.head.data() + proto::header_size, payload.data(), payload.size());
  f.head_length = std::uint8_t(proto::header_size + payload.size());
  if (wake) wake_writer();
}

void mux_session::queue_data(const stream_ptr& s, chunk payload, std::uint32_t length, bool fin) {
  out_frame& f = data_queue_.emplace_back();
  proto::encode_header(
      {length, proto::frame_type::data, fin ? proto::flags::fin : proto::flags::none, s->id},
      std::span<std::uint8_t, proto::header_size>(f.head.data(), proto::header_size));
  f.head_length = proto::header_size;
  if (payload) ++s->in_flight;
  f.payload = std::move(payload);
  f.payload_length = length;
  f.owner = s;
  stats_.largest_data_sent = std::max(stats_.largest_data_sent, length);
  wake_writer();
}

asio::awaitable<void> mux_session::write_loop() {
  auto self = shared_from_this();
  std::vector<asio::const_buffer> buffers;
  while (open_) {
    if (control_queue_.empty() && data_queue_.empty()) {
      co_await wait_for_wake(writer_wake_);
      continue;
    }
    buffers.clear();
    const std::size_t controls = std::min(control_queue_.size(), max_gather_frames);
    for (std::size_t i = 0; i < controls; ++i)
      buffers.emplace_back(control_queue_[i].head.data(), control_queue_[i].head_length);
    std::size_t datas = 0, bytes = 0;
    out_frame* spliced = nullptr;  // the last frame gathered, when its payload is in a pipe
    while (datas < data_queue_.size() && datas < max_gather_frames && bytes < max_gather_bytes) {
      out_frame& f = data_queue_[datas++];
      if (f.owner->aborted) continue;  // its RESET went ahead; the bytes are moot
      buffers.emplace_back(f.head.data(), f.head_length);
      if (f.from_pipe) {
        spliced = &f;
        break;
      }
      if (f.payload_length) buffers.emplace_back(f.payload.get(), f.payload_length);
      bytes += f.payload_length;
    }
    if (!buffers.empty()) {
      // Before a spliced payload the headers go out on their own, not held back with MSG_MORE
      // for the payload's segment: a held-back header made the kernel send the rest of that
      // segment later from the peer's ACK (on loopback, the peer's CPU), out of order, and
      // segments were resent spuriously (docs/performance.md, section 1).
      auto [ec, n] = co_await connection_.write(buffers);
      if (!open_) co_return;
      if (ec) {
        close("write failed: " + ec.message());
        co_return;
      }
    }
    if (spliced) {
      auto ec = co_await splice_payload(*spliced);
      if (!open_) co_return;
      if (ec) {
        close("write failed: " + ec.message());
        co_return;
      }
    }
    control_queue_.erase(control_queue_.begin(), control_queue_.begin() + controls);
    for (std::size_t i = 0; i < datas; ++i) {
      out_frame& f = data_queue_.front();
      if (f.payload) {
        pool_.give(std::move(f.payload));
        --f.owner->in_flight;
        f.owner->from_socket_wake.cancel();
      } else if (f.from_pipe) {
        f.owner->pipe_bytes -= f.payload_length;
        f.owner->from_socket_wake.cancel();
      }
      data_queue_.pop_front();
    }
  }
}

}  // namespace culvert::shared::net
