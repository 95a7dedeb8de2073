// A stream's life cycle in a multiplexer session: opened by the worker for a visitor
// (open_stream) or by an OPEN at the client (handle_open, then the local dial, queued past
// max_dials), its relays started, and its end: FIN both ways, a RESET, or the idle timeout.
// Invariant: stream ids strictly increase; remove_stream runs once per stream, closing its socket
// with RST on any abnormal end, and gives back its buffers and its window growth.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <cstring>

#include "shared/net/mux_session.hpp"
#include "shared/net/mux_stream.hpp"
#include "shared/net/socket_options.hpp"
#include "shared/net/spawn.hpp"

namespace culvert::shared::net {

namespace {

// Once the highest stream id opened reaches this, the session opens no more streams: the worker
// puts its visitors on another data connection (docs/protocol.md, section 6.2).
constexpr std::uint32_t stream_ids_exhausted = 0xfffffff0u;

}  // namespace

// Returns once the stream is removed (remove_stream wakes from_socket_wake; other wakes of it,
// such as a WINDOW, are only looked past).
asio::awaitable<void> mux_session::wait_until_closed(stream_ptr s) {
  while (!s->closed) co_await wait_for_wake(s->from_socket_wake);
}

bool mux_session::open_stream(tcp::socket visitor, std::string peer) {
  if (!open_ || role_ != role::server || streams_.size() >= settings_.max_streams) return false;
  // Past the buffer budget a new stream's initial window would be memory on top of it.
  if (pool_.over_budget()) return false;
  if (last_stream_id_ >= stream_ids_exhausted) return false;
  const std::uint32_t id = last_stream_id_ == 0 ? 1 : last_stream_id_ + 2;  // server ids are odd
  last_stream_id_ = id;
  auto s = std::make_shared<stream>(id, std::move(visitor), settings_);
  s->peer = std::move(peer);
  s->connected = true;
  streams_.emplace(id, s);

  std::array<std::uint8_t, 1 + max_peer_text> payload;
  const std::size_t n = std::min(s->peer.size(), max_peer_text);
  payload[0] = std::uint8_t(n);
  std::memcpy(payload.data() + 1, s->peer.data(), n);
  queue_control(proto::frame_type::open, 0, id, std::span(payload.data(), 1 + n), false);
  s->open_unannounced = true;
  start_relays(s);
  return true;
}

void mux_session::start_relays(const stream_ptr& s) {
  set_nodelay(s->socket);
  error_code ec;
  if (!s->socket.non_blocking()) s->socket.non_blocking(true, ec);  // the dial may have set it
  auto ex = connection_.get_executor();
  spawn(ex, socket_to_peer(s), "stream relay (socket to peer)");
  if (!s->pending.empty()) {
    // Bytes queued while the client dialled: the new socket has room for them, so write at once
    // and leave only the rest (if any) to the writer coroutine.
    std::vector<asio::const_buffer> buffers;
    gather_pending(*s, buffers);
    const std::size_t n = s->socket.write_some(buffers, ec);
    if (ec && ec != asio::error::would_block && ec != asio::error::try_again) {
      reset_stream(s, "write to socket failed: " + ec.message(), true);
      return;
    }
    if (!ec) pending_written(*s, n);
  }
  if (!s->pending.empty() || s->peer_fin) start_socket_writer(s);
}

// Called when bytes were left over because the socket is full (or a FIN arrived): no second
// write attempt here, the coroutine waits for room.
void mux_session::start_socket_writer(const stream_ptr& s) {
  if (!s->connected || s->closed) return;  // start_relays starts it once the dial succeeds
  if (s->socket_writer_running) return;    // it picks the new bytes up after its current write
  s->socket_writer_running = true;
  spawn(connection_.get_executor(), peer_to_socket(s), "stream relay (peer to socket)");
}

bool mux_session::handle_open(std::uint32_t id, std::span<const std::uint8_t> payload) {
  if (role_ != role::client) {
    protocol_violation("OPEN sent by the client");
    return false;
  }
  if (id <= last_stream_id_ || (id & 1) == 0) {
    protocol_violation("OPEN with a reused or even stream id");
    return false;
  }
  if (payload.empty() || payload[0] > max_peer_text || payload.size() != 1u + payload[0]) {
    protocol_violation("OPEN with a malformed peer address");
    return false;
  }
  last_stream_id_ = id;
  // Refused at once with RESET, before any dial: too many streams, or relay buffers past the
  // process's budget.
  const char* refusal = streams_.size() >= settings_.max_streams ? "too many streams"
                        : pool_.over_budget()                    ? "relay buffers over budget"
                                                                 : nullptr;
  if (refusal) {
    std::uint8_t code[4];
    proto::store_u32(code, reset_code);
    queue_control(proto::frame_type::reset, 0, id, code);
    if (refusal_log_.allow())
      spdlog::warn("data connection: stream refused: {} ({} more refused before this)", refusal,
                   refusal_log_.suppressed());
    return true;
  }
  auto s = std::make_shared<stream>(id, tcp::socket(connection_.get_executor()), settings_);
  s->peer.assign(reinterpret_cast<const char*>(payload.data() + 1), payload[0]);
  if (hooks_.make_observer) s->observer = hooks_.make_observer();
  streams_.emplace(id, s);
  // At most max_dials connects at once: a burst of visitors waits its turn in order, and a
  // storm of opens, each reset by its visitor, piles up no local connections (a queued stream
  // that is reset is skipped, never dialled).
  if (dials_in_flight_ >= settings_.max_dials)
    waiting_dials_.push_back(s);
  else
    spawn(connection_.get_executor(), dial_then_relay(s), "stream dial");
  return true;
}

void mux_session::start_waiting_dial() {
  while (!waiting_dials_.empty() && dials_in_flight_ < settings_.max_dials) {
    auto s = std::move(waiting_dials_.front());
    waiting_dials_.pop_front();
    if (s->closed) continue;
    spawn(connection_.get_executor(), dial_then_relay(s), "stream dial");
    return;
  }
}

asio::awaitable<void> mux_session::dial_then_relay(stream_ptr s) {
  using namespace asio::experimental::awaitable_operators;
  auto self = shared_from_this();
  if (s->closed) co_return;  // reset before this coroutine first ran
  // A RESET (or the session's end) while dialling cancels the dial: its socket closes now,
  // rather than the local service getting a connection for a visitor that is gone.
  ++dials_in_flight_;
  auto dialled = co_await (hooks_.dial() || wait_until_closed(s));
  --dials_in_flight_;
  start_waiting_dial();
  if (s->closed || dialled.index() != 0) co_return;
  auto& socket = std::get<0>(dialled);
  if (!socket) {
    reset_stream(s, "local service unreachable", true);
    co_return;
  }
  s->socket = std::move(*socket);
  s->connected = true;
  start_relays(s);
}

// The socket's end of stream: an empty DATA with FIN after everything queued.
void mux_session::queue_fin(const stream_ptr& s) {
  queue_data(s, {}, 0, true);
  s->sent_fin = true;
  finish_if_done(s);
}

void mux_session::finish_if_done(const stream_ptr& s) {
  if (s->sent_fin && s->socket_shut && s->pending.empty()) remove_stream(s, false, "");
}

void mux_session::reset_stream(const stream_ptr& s, const std::string& reason, bool tell_peer) {
  if (s->closed) return;
  if (tell_peer) {
    std::uint8_t code[4];
    proto::store_u32(code, reset_code);
    queue_control(proto::frame_type::reset, 0, s->id, code);
  }
  s->aborted = true;
  remove_stream(s, true, reason);
}

void mux_session::remove_stream(const stream_ptr& s, bool abnormal, const std::string& reason) {
  if (s->closed) return;
  s->closed = true;
  if (abnormal)
    reset_and_close(s->socket);
  else
    graceful_close(s->socket);
  for (auto& p : s->pending) pool_.give(std::move(p.data));
  s->pending.clear();
  s->from_socket_wake.cancel();
  tuner_.release(s->window);
  streams_.erase(s->id);
  if (s->observer) s->observer->on_end(abnormal);
  if (hooks_.on_stream_closed) {
    hooks_.on_stream_closed(stream_report{s->id, s->peer, s->bytes_from_socket, s->bytes_to_socket,
                                          clock_type::now() - s->opened, abnormal, reason});
  }
}

// Resets every stream that moved no byte either way for settings_.stream_idle_timeout: a
// visitor (or local service) that neither reads nor writes cannot hold its buffers for ever.
// Looks a few times per timeout, so a stream lives at most an eighth longer than it.
asio::awaitable<void> mux_session::stream_idle_loop() {
  auto self = shared_from_this();
  const auto timeout = settings_.stream_idle_timeout;
  const auto period = std::clamp<clock_type::duration>(timeout / 8, std::chrono::milliseconds(10),
                                                       std::chrono::seconds(5));
  std::vector<stream_ptr> idle;
  while (open_) {
    stream_idle_timer_.expires_after(period);
    co_await stream_idle_timer_.async_wait(use_tuple);
    if (!open_) co_return;
    const auto now = clock_type::now();
    for (auto& [id, s] : streams_)
      if (now - s->last_active >= timeout) idle.push_back(s);
    for (auto& s : idle)
      reset_stream(s,
                   "idle for " +
                       std::to_string(
                           std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count()) +
                       " ms",
                   true);
    idle.clear();
  }
}

}  // namespace culvert::shared::net
