// A stream's two relays in a multiplexer session, and the copying path: socket_to_peer reads
// the stream's socket into DATA frames, peer_to_socket writes what the socket could not take at
// once; the reader writes arriving payloads directly (deliver_incoming). Worker and client alike.
// Invariant: at most the peer's credit is read and chunks_in_flight chunks queued per stream;
// credit goes back only for bytes written to the socket, in WINDOWs of a quarter window or more.
#include <algorithm>
#include <boost/asio/write.hpp>
#include <cstring>

#include "shared/net/mux_session.hpp"
#include "shared/net/mux_stream.hpp"

namespace culvert::shared::net {

namespace {

// A write to a stream's socket gathers at most this many chunks (1 MiB of 64 KiB chunks).
constexpr std::size_t max_gather_chunks = 16;

std::span<const char> as_chars(std::span<const std::uint8_t> s) {
  return {reinterpret_cast<const char*>(s.data()), s.size()};
}

}  // namespace

asio::awaitable<void> mux_session::socket_to_peer(stream_ptr s) {
  auto self = shared_from_this();
  // Read before waiting when bytes are likely there: a new visitor usually speaks first (HTTP),
  // and a read that filled its chunk left more behind. Either saves a pass through epoll.
  bool maybe_more = true;
  for (;;) {
    // Past the buffer budget a stream keeps one chunk in flight, not more: reads slow down
    // instead of memory growing, and every stream still moves (its own write wakes it).
    while (!s->closed &&
           (s->send_credit <= 0 || s->in_flight >= settings_.chunks_in_flight ||
            s->pipe_bytes >= max_spliced_in_flight || (s->in_flight > 0 && pool_.over_budget())))
      co_await wait_for_wake(s->from_socket_wake);
    if (s->closed) co_return;
    if (!maybe_more) {
      // Wait for readability first so an idle stream holds no buffer and no pipe.
      auto [wait_error] = co_await s->socket.async_wait(tcp::socket::wait_read, use_tuple);
      if (s->closed) co_return;
      if (wait_error) {
        reset_stream(s, "socket wait failed: " + wait_error.message(), true);
        co_return;
      }
    }
    if (s->bulk && !s->pipe && splice_allowed_ && !s->observer) s->pipe = pool_.take_pipe();
    if (s->pipe) {
      maybe_more = co_await splice_from_socket(s);
      if (s->closed || s->sent_fin) co_return;
      continue;
    }
    chunk c = pool_.take();
    const std::size_t want =
        std::size_t(std::min<std::int64_t>(buffer_pool::chunk_size, s->send_credit));
    error_code ec;
    const std::size_t n = s->socket.read_some(asio::buffer(c.get(), want), ec);
    maybe_more = !ec && n == want;
    s->bulk = !ec && n >= bulk_read_bytes;
    if (s->open_unannounced) {
      s->open_unannounced = false;
      wake_writer();  // OPEN goes now, with the DATA queued below if this read got bytes
    }
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
      pool_.give(std::move(c));
      continue;
    }
    if (ec == asio::error::eof) {
      pool_.give(std::move(c));
      queue_fin(s);
      co_return;
    }
    if (ec) {
      pool_.give(std::move(c));
      reset_stream(s, "read from socket failed: " + ec.message(), true);
      co_return;
    }
    stats_.copied += n;
    counted_from_socket(*s, n, false);
    if (s->observer) s->observer->on_from_socket({reinterpret_cast<const char*>(c.get()), n});
    queue_data(s, std::move(c), std::uint32_t(n), false);
  }
}

// Runs while bytes wait for the socket (the reader writes directly when the socket has room),
// so an idle stream holds no coroutine here.
asio::awaitable<void> mux_session::peer_to_socket(stream_ptr s) {
  auto self = shared_from_this();
  std::vector<asio::const_buffer> buffers;
  for (;;) {
    if (s->closed) co_return;
    if (!s->pending.empty() && !s->pending.front().data) {  // bytes waiting in the pipe
      const std::size_t before = s->pending.size();
      const std::uint32_t left = s->pending.front().end - s->pending.front().begin;
      if (!drain_rx_pipe(s)) co_return;
      if (s->pending.size() == before &&
          s->pending.front().end - s->pending.front().begin == left) {
        auto [ec] = co_await s->socket.async_wait(tcp::socket::wait_write, use_tuple);
        if (s->closed) co_return;
        if (ec) {
          reset_stream(s, "socket wait failed: " + ec.message(), true);
          co_return;
        }
      }
      continue;
    }
    if (s->pending.empty()) {
      if (s->peer_fin) {
        error_code ec;
        s->socket.shutdown(tcp::socket::shutdown_send, ec);
        s->socket_shut = true;
        finish_if_done(s);
      }
      s->socket_writer_running = false;
      co_return;
    }
    gather_pending(*s, buffers);
    auto [ec, n] = co_await asio::async_write(s->socket, buffers, use_tuple);
    if (s->closed) co_return;
    if (ec) {
      reset_stream(s, "write to socket failed: " + ec.message(), true);
      co_return;
    }
    pending_written(*s, n);
  }
}

// Payload bytes of the current DATA frame, from the read buffer.
void mux_session::deliver_incoming(std::span<const std::uint8_t> payload) {
  const stream_ptr& s = incoming_.stream;
  if (!s || s->closed) return;  // unknown, or ended while its frame was arriving: dropped
  stats_.copied += payload.size();
  if (s->observer) s->observer->on_from_peer(as_chars(payload));
  auto rest = payload;
  if (s->connected && s->pending.empty()) {
    // Fast path: the socket usually has room; write straight from the read buffer.
    error_code ec;
    std::size_t n = s->socket.write_some(asio::buffer(rest.data(), rest.size()), ec);
    if (ec && ec != asio::error::would_block && ec != asio::error::try_again) {
      reset_stream(s, "write to socket failed: " + ec.message(), true);
      return;
    }
    if (!ec) rest = rest.subspan(n);
  }
  if (!rest.empty()) {
    buffer_for_socket(*s, rest);
    start_socket_writer(s);
  }
  // Counted once the rest is queued: the credit it may send knows the stream is backlogged.
  const std::size_t written = payload.size() - rest.size();
  if (written > 0) counted_to_socket(*s, written, false);
}

void mux_session::gather_pending(const stream& s, std::vector<asio::const_buffer>& buffers) {
  buffers.clear();
  for (auto& p : s.pending) {
    if (!p.data) break;  // waits in the pipe: peer_to_socket splices it when it comes first
    buffers.emplace_back(p.data.get() + p.begin, p.end - p.begin);
    if (buffers.size() == max_gather_chunks) break;
  }
}

void mux_session::pending_written(stream& s, std::size_t n) {
  std::size_t done = 0;  // chunks fully written
  for (std::size_t left = n; left > 0;) {
    auto& p = s.pending[done];
    const std::size_t k = std::min<std::size_t>(left, p.end - p.begin);
    p.begin += std::uint32_t(k);
    left -= k;
    if (p.begin == p.end) {
      pool_.give(std::move(p.data));
      ++done;
    }
  }
  s.pending.erase(s.pending.begin(), s.pending.begin() + std::ptrdiff_t(done));
  counted_to_socket(s, n, false);
}

// Bytes read from a stream's socket: its send credit, its report, the tunnel's counters.
void mux_session::counted_from_socket(stream& s, std::size_t n, bool spliced) {
  s.send_credit -= std::int64_t(n);
  s.bytes_from_socket += n;
  s.last_active = clock_type::now();
  relayed_since_tick_ = true;
  if (hooks_.on_traffic) hooks_.on_traffic(n, 0, spliced);
}

// Bytes written to a stream's socket: its report, the tunnel's counters, credit for the peer.
void mux_session::counted_to_socket(stream& s, std::size_t n, bool spliced) {
  s.bytes_to_socket += n;
  s.last_active = clock_type::now();
  if (hooks_.on_traffic) hooks_.on_traffic(0, n, spliced);
  credit_consumed(s, n);
}

void mux_session::buffer_for_socket(stream& s, std::span<const std::uint8_t> bytes) {
  s.window.backlog();
  while (!bytes.empty()) {
    if (s.pending.empty() || !s.pending.back().data ||
        s.pending.back().end == buffer_pool::chunk_size)
      s.pending.push_back({pool_.take(), 0, 0});
    auto& tail = s.pending.back();
    const std::size_t k = std::min<std::size_t>(bytes.size(), buffer_pool::chunk_size - tail.end);
    std::memcpy(tail.data.get() + tail.end, bytes.data(), k);
    tail.end += std::uint32_t(k);
    bytes = bytes.subspan(k);
  }
}

void mux_session::credit_consumed(stream& s, std::size_t bytes) {
  if (s.peer_fin || s.closed) return;  // nothing more will come: no credit needed
  s.unacked += std::uint32_t(bytes);
  s.window.delivered(bytes);
  if (s.unacked < s.window.size / 4) return;
  // Past the buffer budget a stream with bytes still waiting for its socket gets no more credit
  // (nor a larger window) until they are written: the write that empties it grants it all, so
  // the credit is only delayed, never lost.
  const bool over_budget = pool_.over_budget();
  if (over_budget && !s.pending.empty()) return;
  std::uint32_t increment = s.unacked;
  // Auto-tuning ends a delivery-rate sample here once it is long enough (no round trip measured
  // yet: nothing to judge, and no clock to read).
  if (!over_budget && min_rtt_.count() > 0) {
    const auto tuned = tuner_.end_sample(s.window, min_rtt_, !s.pending.empty(), clock_type::now());
    if (tuned.sampled) ++stats_.window_samples;
    if (tuned.growth > 0) {
      increment += tuned.growth;
      stats_.largest_window = std::max(stats_.largest_window, s.window.size);
    }
  }
  s.recv_credit += increment;
  s.unacked = 0;
  std::uint8_t payload[4];
  proto::store_u32(payload, increment);
  queue_control(proto::frame_type::window, 0, s.id, payload);
}

}  // namespace culvert::shared::net
