// Private to the multiplexer's files (shared/net/mux_*.cpp): a stream's state, a frame queued for
// the writer, and the limits more than one of those files applies. Worker and client alike.
// Invariant: bytes for a stream's socket leave in the order of `pending` (chunks and pipe
// entries alike); only remove_stream sets `closed`, and every relay checks it after each wait.
#pragma once

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "shared/net/mux_session.hpp"

namespace culvert::shared::net {

namespace asio = boost::asio;
namespace proto = protocol;
using asio::ip::tcp;
using clock_type = std::chrono::steady_clock;
using boost::system::error_code;

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
// DATA payloads stream through (see read_loop), so a read never has to keep more than the
// unfinished header or control frame at the end of the previous one: it need not hold a whole
// DATA frame.
constexpr std::size_t read_buffer_size = proto::header_size + buffer_pool::chunk_size;
// The visitor's address an OPEN carries, at most (after its length byte).
constexpr std::size_t max_peer_text = 63;
// The code of every RESET sent (docs/protocol.md: senders write 1, receivers ignore it).
constexpr std::uint32_t reset_code = 1;
// A read this large marks a stream as bulk: its next reads splice (clear text only). Smaller
// reads copy, which costs fewer system calls for a request or a keystroke.
constexpr std::size_t bulk_read_bytes = 32 * 1024;
// A bulk stream's spliced bytes not yet written to the connection, at most (its pipe holds up to
// 1 MiB): frames as large as the protocol allows, two of them queued, so the writer always has
// the next frame while the stream reads. Fewer, larger frames mean fewer system calls per byte.
constexpr std::size_t max_spliced_in_flight = 2 * proto::max_data_payload;

struct mux_session::out_frame {
  std::array<std::uint8_t, proto::header_size + 1 + max_peer_text> head;
  std::uint8_t head_length = 0;
  chunk payload;  // DATA only
  std::uint32_t payload_length = 0;
  bool from_pipe = false;  // DATA whose payload waits in the owner's pipe, not in `payload`
  stream_ptr owner;        // DATA only
};

struct mux_session::stream {
  stream(std::uint32_t stream_id, tcp::socket s, const mux_settings& settings)
      : id(stream_id),
        socket(std::move(s)),
        send_credit(settings.initial_window),
        recv_credit(settings.initial_window),
        window(settings.initial_window, opened),
        from_socket_wake(socket.get_executor()) {}

  struct pending_bytes {
    chunk data;  // null: the bytes wait in rx_pipe (splice path), in this order
    std::uint32_t begin = 0, end = 0;
  };

  std::uint32_t id;
  tcp::socket socket;
  std::string peer;
  clock_type::time_point opened = clock_type::now();
  clock_type::time_point last_active = opened;  // the last byte moved either way (idle timeout)
  bool connected = false;                       // client role: the local service has been dialled
  bool closed = false;   // removed from the session; relays exit when they see it
  bool aborted = false;  // reset: its queued DATA frames are dropped, not sent

  // socket -> peer
  std::int64_t send_credit;
  std::size_t in_flight = 0;  // DATA frames with a chunk queued and not yet written
  // Splice path: bytes read into the pipe and queued as DATA, not yet written. The pipe is held
  // only while the stream is bulk; it goes back to the pool once empty.
  std::optional<splice_pipe> pipe;
  std::uint32_t pipe_bytes = 0;
  bool bulk = false;  // the last read was large: splice the next one
  bool sent_fin = false;
  // Server role: OPEN is queued but the writer not yet woken; the first read wakes it, so a
  // visitor's first bytes leave with the OPEN in one write (one wake-up of the client, not two).
  bool open_unannounced = false;

  // peer -> socket. A vector, not a deque: an empty deque still allocates ~600 bytes, and most
  // streams are idle with nothing pending.
  std::vector<pending_bytes> pending;
  // Splice path: bytes from the connection waiting in this pipe for the socket (their places in
  // the order are `pending` entries without a chunk). Held only while it has bytes or a frame is
  // arriving.
  std::optional<splice_pipe> rx_pipe;
  std::uint32_t rx_pipe_bytes = 0;
  bool socket_writer_running = false;  // peer_to_socket runs only while bytes or a FIN wait
  std::int64_t recv_credit;
  stream_window window;  // the receive window and its auto-tuning sample (tuner_)
  std::uint32_t unacked = 0;
  bool peer_fin = false;
  bool socket_shut = false;

  asio::steady_timer from_socket_wake;  // credit or a queue slot became free
  std::unique_ptr<stream_observer> observer;
  std::uint64_t bytes_from_socket = 0, bytes_to_socket = 0;
};

// A timer used as an event: wait until cancelled. Callers re-check their condition after it.
inline asio::awaitable<void> wait_for_wake(asio::steady_timer& timer) {
  timer.expires_at(clock_type::time_point::max());
  co_await timer.async_wait(use_tuple);
}

}  // namespace culvert::shared::net
