// The multiplexer's two splice(2) paths for clear-text bulk streams: socket -> pipe ->
// connection (splice_from_socket, then the writer's splice_payload) and connection -> pipe ->
// socket (splice_incoming, drain_rx_pipe). Worker and client; never TLS, never observed streams.
// Invariant: bytes in a pipe keep their place in the stream's order (a `pending` entry, or a
// queued DATA frame); a pipe goes back to the pool only when empty.
#include <sys/ioctl.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "shared/net/mux_session.hpp"
#include "shared/net/mux_stream.hpp"

namespace culvert::shared::net {

// One step of socket_to_peer for a bulk stream in clear text: bytes go from the socket into the
// stream's pipe and are queued as DATA, without a copy through user space. Returns whether more
// bytes are likely waiting (read again before waiting).
asio::awaitable<bool> mux_session::splice_from_socket(stream_ptr s) {
  const std::size_t room = max_spliced_in_flight - s->pipe_bytes;
  const std::size_t want =
      std::min<std::size_t>({proto::max_data_payload, std::size_t(s->send_credit), room});
  const ssize_t n = s->pipe->fill_from(s->socket.native_handle(), want);
  const int err = n < 0 ? errno : 0;
  if (n < 0 && (err == EAGAIN || err == EINTR)) {
    if (s->pipe_bytes > 0) {
      // The socket may be empty, or the pipe out of slots: let the writer empty it, then look.
      while (!s->closed && s->pipe_bytes > 0) co_await wait_for_wake(s->from_socket_wake);
      co_return true;
    }
    // Nothing to read: the burst is over. Read by copy again until the next large read.
    s->bulk = false;
    pool_.give_pipe(std::move(*s->pipe));
    s->pipe.reset();
    co_return false;
  }
  if (n < 0) {
    reset_stream(s, std::string("read from socket failed: ") + std::strerror(err), true);
    co_return false;
  }
  if (n == 0) {
    queue_fin(s);
    co_return false;
  }
  stats_.spliced += std::size_t(n);
  s->pipe_bytes += std::uint32_t(n);
  counted_from_socket(*s, std::size_t(n), true);
  queue_data(s, {}, std::uint32_t(n), false);
  data_queue_.back().from_pipe = true;
  co_return std::size_t(n) == want;
}

// Moves a DATA frame's payload from its stream's pipe to the connection; its header went first.
asio::awaitable<error_code> mux_session::splice_payload(out_frame& f) {
  auto& socket = connection_.socket();
  std::size_t left = f.payload_length;
  while (left > 0) {
    const ssize_t n = f.owner->pipe->drain_to(socket.native_handle(), left);
    if (n > 0) {
      left -= std::size_t(n);
      continue;
    }
    const int err = errno;
    if (err != EAGAIN && err != EINTR) co_return error_code(err, boost::system::system_category());
    if (err == EAGAIN) {
      auto [wait_error] = co_await socket.async_wait(tcp::socket::wait_write, use_tuple);
      if (wait_error) co_return wait_error;
    }
  }
  co_return error_code{};
}

// The rest of the current DATA payload may go from the connection to the stream's socket by
// splice: clear text, and no observer that must see the bytes.
bool mux_session::incoming_can_splice() {
  const stream_ptr& s = incoming_.stream;
  if (!splice_allowed_ || incoming_.copy || !s || s->closed || !s->connected || s->observer)
    return false;
  if (!s->rx_pipe) s->rx_pipe = pool_.take_pipe();
  return s->rx_pipe.has_value();
}

// One splice of payload from the connection into the stream's pipe, then on into its socket as
// far as the socket takes it (when nothing is queued ahead); the rest waits in the pipe for
// peer_to_socket. A full pipe sends the rest of the frame down the copying path, queued behind
// the pipe's bytes. Returns false once the session ended.
asio::awaitable<bool> mux_session::splice_incoming() {
  auto& from = connection_.socket();
  const stream_ptr s = incoming_.stream;
  const ssize_t n = s->rx_pipe->fill_from(from.native_handle(), incoming_.left);
  if (n == 0) {
    close("closed by peer");
    co_return false;
  }
  if (n < 0) {
    const int err = errno;
    if (err == EINTR) co_return true;
    if (err != EAGAIN) {
      close(std::string("connection lost: ") + std::strerror(err));
      co_return false;
    }
    // Nothing to read, or no free slot in the pipe: ask the socket which.
    int readable = 0;
    if (s->rx_pipe_bytes > 0 && ::ioctl(from.native_handle(), FIONREAD, &readable) == 0 &&
        readable > 0) {
      incoming_.copy = true;
      ++stats_.pipe_overflows;
      co_return true;
    }
    auto [ec] = co_await from.async_wait(tcp::socket::wait_read, use_tuple);
    if (!open_) co_return false;
    if (ec) {
      close("connection lost: " + ec.message());
      co_return false;
    }
    co_return true;
  }
  last_received_ = clock_type::now();
  stats_.spliced += std::size_t(n);
  incoming_.left -= std::uint32_t(n);
  s->rx_pipe_bytes += std::uint32_t(n);
  if (!s->pending.empty() && !s->pending.back().data) {
    s->pending.back().end += std::uint32_t(n);
  } else {
    s->pending.push_back({chunk{}, 0, std::uint32_t(n)});
  }
  // Bytes queued ahead mean the socket writer is already waiting for room.
  if (!s->socket_writer_running && !s->pending.front().data) drain_rx_pipe(s);
  if (!s->pending.empty()) {
    s->window.backlog();
    start_socket_writer(s);
  }
  if (incoming_.left == 0) end_incoming();
  co_return open_;
}

// Moves the first queued entry, which waits in the pipe, into the socket as far as it takes it
// now; never waits. False if the stream was reset (a write error).
bool mux_session::drain_rx_pipe(const stream_ptr& s) {
  auto& front = s->pending.front();
  std::size_t written = 0;
  while (front.end - front.begin > written) {
    const ssize_t m =
        s->rx_pipe->drain_to(s->socket.native_handle(), front.end - front.begin - written);
    if (m > 0) {
      written += std::size_t(m);
      continue;
    }
    const int err = errno;
    if (err == EINTR) continue;
    if (err != EAGAIN) {
      reset_stream(s, std::string("write to socket failed: ") + std::strerror(err), true);
      return false;
    }
    break;
  }
  if (written == 0) return true;
  front.begin += std::uint32_t(written);
  if (front.begin == front.end) s->pending.erase(s->pending.begin());
  s->rx_pipe_bytes -= std::uint32_t(written);
  counted_to_socket(*s, written, true);
  release_rx_pipe_if_empty(*s);
  return true;
}

void mux_session::release_rx_pipe_if_empty(stream& s) {
  if (!s.rx_pipe || s.rx_pipe_bytes > 0 || incoming_.stream.get() == &s) return;
  pool_.give_pipe(std::move(*s.rx_pipe));
  s.rx_pipe.reset();
}

}  // namespace culvert::shared::net
