// The multiplexer: one reader parsing frames, one writer gathering queued frames into a single
// writev (control frames first), and two relay coroutines per stream. See mux_session.hpp for the
// invariants and docs/protocol.md for the rules enforced here.
#include "shared/net/mux_session.hpp"

#include <malloc.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstring>

#include "shared/log/printable.hpp"
#include "shared/net/socket_options.hpp"
#include "shared/net/spawn.hpp"
#include "shared/protocol/messages.hpp"

namespace culvert::shared::net {

namespace asio = boost::asio;
namespace proto = protocol;
using asio::ip::tcp;
using clock_type = std::chrono::steady_clock;
using boost::system::error_code;

namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
// DATA payloads stream through (see read_loop), so a read never has to keep more than the
// unfinished header or control frame at the end of the previous one: it need not hold a whole
// DATA frame.
constexpr std::size_t read_buffer_size = proto::header_size + buffer_pool::chunk_size;
constexpr std::size_t max_gather_frames = 64;
constexpr std::size_t max_gather_bytes = 1024 * 1024;
constexpr std::int64_t max_credit = 0x7fffffff;
// Flood limits: cheap frames a peer may send per window of arrival times (note_frame_arrival).
constexpr std::chrono::seconds flood_window{1};
constexpr std::uint32_t max_pings_per_second = 50;
constexpr std::uint32_t max_stale_frames_per_second = 10000;
// The visitor's address an OPEN carries, at most (after its length byte).
constexpr std::size_t max_peer_text = 63;
// Once the highest stream id opened reaches this, the session opens no more streams: the worker
// puts its visitors on another data connection (docs/protocol.md, section 6.2).
constexpr std::uint32_t stream_ids_exhausted = 0xfffffff0u;
// The code of every RESET sent (docs/protocol.md: senders write 1, receivers ignore it).
constexpr std::uint32_t reset_code = 1;
// A PING echo older than this (or from a clock that went back) is no round-trip sample.
constexpr std::uint64_t max_echo_age_ns = 60'000'000'000ULL;
// A write to a stream's socket gathers at most this many chunks (1 MiB of 64 KiB chunks).
constexpr std::size_t max_gather_chunks = 16;
// The minimum round trip (what window auto-tuning multiplies by) is kept this long (six
// keepalives), so that a lengthened path is seen.
constexpr std::chrono::seconds min_rtt_lifetime{30};
// A read this large marks a stream as bulk: its next reads splice (clear text only). Smaller
// reads copy, which costs fewer system calls for a request or a keystroke.
constexpr std::size_t bulk_read_bytes = 32 * 1024;
// A bulk stream's spliced bytes not yet written to the connection, at most (its pipe holds up to
// 1 MiB): frames as large as the protocol allows, two of them queued, so the writer always has
// the next frame while the stream reads. Fewer, larger frames mean fewer system calls per byte.
constexpr std::size_t max_spliced_in_flight = 2 * proto::max_data_payload;

std::uint64_t now_ns() {
  return std::uint64_t(
      std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch())
          .count());
}

std::span<const char> as_chars(std::span<const std::uint8_t> s) {
  return {reinterpret_cast<const char*>(s.data()), s.size()};
}

}  // namespace

struct mux_session::out_frame {
  std::array<std::uint8_t, proto::header_size + 1 + max_peer_text> head;
  std::uint8_t head_length = 0;
  chunk payload;  // DATA only
  std::uint32_t payload_length = 0;
  bool from_pipe = false;  // DATA whose payload waits in the owner's pipe, not in `payload`
  stream_ptr owner;        // DATA only
};

struct mux_session::stream {
  stream(std::uint32_t id, tcp::socket s, const mux_settings& settings)
      : id(id),
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

namespace {
// A timer used as an event: wait until cancelled. Callers re-check their condition after it.
asio::awaitable<void> wait_for_wake(asio::steady_timer& timer) {
  timer.expires_at(clock_type::time_point::max());
  co_await timer.async_wait(use_tuple);
}
}  // namespace

// Returns once the stream is removed (remove_stream wakes from_socket_wake; other wakes of it,
// such as a WINDOW, are only looked past).
asio::awaitable<void> mux_session::wait_until_closed(stream_ptr s) {
  while (!s->closed) co_await wait_for_wake(s->from_socket_wake);
}

mux_session::mux_session(transport connection, role r, mux_settings settings, mux_hooks hooks,
                         buffer_pool& pool, window_budget& windows)
    : connection_(std::move(connection)),
      role_(r),
      settings_(settings),
      hooks_(std::move(hooks)),
      pool_(pool),
      tuner_(settings.initial_window, settings.max_window, windows),
      writer_wake_(connection_.get_executor()),
      keepalive_timer_(connection_.get_executor()),
      stream_idle_timer_(connection_.get_executor()),
      splice_allowed_(!connection_.is_tls() && splice_enabled()) {}

mux_session::~mux_session() {
  for (auto& f : control_queue_) pool_.give(std::move(f.payload));
  for (auto& f : data_queue_) pool_.give(std::move(f.payload));
}

void mux_session::start() {
  set_nodelay(connection_.socket());
  error_code ec;
  connection_.socket().non_blocking(true, ec);
  last_received_ = clock_type::now();
  flood_window_start_ = last_received_;
  auto ex = connection_.get_executor();
  spawn(ex, read_loop(), "mux reader");
  spawn(ex, write_loop(), "mux writer");
  spawn(ex, keepalive_loop(), "mux keepalive");
  if (settings_.stream_idle_timeout.count() > 0) spawn(ex, stream_idle_loop(), "mux stream idle");
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

void mux_session::close(const std::string& reason) {
  if (!open_) return;
  open_ = false;
  close_reason_ = reason;
  std::vector<stream_ptr> all;
  all.reserve(streams_.size());
  for (auto& [id, s] : streams_) all.push_back(s);
  for (auto& s : all) remove_stream(s, true, "data connection closed: " + reason);
  connection_.close();
  writer_wake_.cancel();
  keepalive_timer_.cancel();
  stream_idle_timer_.cancel();
  if (auto hook = std::move(hooks_.on_closed)) hook(reason);
}

// ---- reading ---------------------------------------------------------------------------------

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

void mux_session::release_rx_pipe_if_empty(stream& s) {
  if (!s.rx_pipe || s.rx_pipe_bytes > 0 || incoming_.stream.get() == &s) return;
  pool_.give_pipe(std::move(*s.rx_pipe));
  s.rx_pipe.reset();
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

void mux_session::handle_ping(const proto::frame_header& h, std::span<const std::uint8_t> payload) {
  if (h.flags & proto::flags::ack) {
    const std::uint64_t sent = proto::load_u64(payload.data());
    const std::uint64_t current = now_ns();
    if (sent <= current && current - sent < max_echo_age_ns) {
      auto sample = std::chrono::microseconds((current - sent) / 1000);
      rtt_ = rtt_.count() == 0 ? sample : (rtt_ * 7 + sample) / 8;
      // The minimum is the path's own delay; it expires so that a lengthened path is seen.
      const auto now = clock_type::now();
      if (min_rtt_.count() == 0 || sample <= min_rtt_ || now - min_rtt_taken_ > min_rtt_lifetime) {
        min_rtt_ = std::max(sample, std::chrono::microseconds(1));
        min_rtt_taken_ = now;
      }
    }
    return;
  }
  if (++pings_in_window_ > max_pings_per_second) return protocol_violation("PING flood");
  queue_control(proto::frame_type::ping, proto::flags::ack, 0, payload);
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

// ---- writing ---------------------------------------------------------------------------------

void mux_session::wake_writer() {
  writer_wake_.cancel();
}

void mux_session::queue_control(proto::frame_type type, std::uint8_t flags, std::uint32_t stream,
                                std::span<const std::uint8_t> payload, bool wake) {
  if (!open_) return;
  out_frame& f = control_queue_.emplace_back();
  proto::encode_header(
      {std::uint32_t(payload.size()), type, flags, stream},
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

asio::awaitable<void> mux_session::keepalive_loop() {
  auto self = shared_from_this();
  std::uint8_t stamp[8];
  // One ping at once gives the window auto-tuning a first RTT sample.
  proto::store_u64(stamp, now_ns());
  queue_control(proto::frame_type::ping, 0, 0, stamp);
  while (open_) {
    keepalive_timer_.expires_after(settings_.keepalive_interval);
    co_await keepalive_timer_.async_wait(use_tuple);
    if (!open_) co_return;
    const auto silent = clock_type::now() - last_received_;
    if (silent > settings_.idle_timeout) {
      close("peer silent for " +
            std::to_string(std::chrono::duration_cast<std::chrono::seconds>(silent).count()) +
            " s");
      co_return;
    }
    proto::store_u64(stamp, now_ns());
    queue_control(proto::frame_type::ping, 0, 0, stamp);
    if (!relayed_since_tick_) release_idle_memory();
    relayed_since_tick_ = false;
    pool_takes_at_tick_ = pool_.takes();
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

void mux_session::release_idle_memory() {
  // The read buffer's pages past its unparsed bytes hold nothing: hand them back to the kernel
  // (they come back as zero pages on the next large read). The loop is suspended, not reading.
  if (read_buffer_) {
    const auto page = std::uintptr_t(sysconf(_SC_PAGESIZE));
    const auto base = std::uintptr_t(read_buffer_.get());
    const auto from = (base + read_end_ + page - 1) & ~(page - 1);
    const auto to = (base + read_buffer_size) & ~(page - 1);
    if (from < to) madvise(reinterpret_cast<void*>(from), to - from, MADV_DONTNEED);
  }
  connection_.release_idle_buffers();  // TLS: the plaintext and records of earlier writes
  // The pool and the heap serve every data connection of the process: trim them only when no
  // connection took a chunk for a whole keepalive interval, not while another one is busy.
  if (pool_.takes() == pool_takes_at_tick_) {
    pool_.trim();
    malloc_trim(0);  // freed relay chunks sit inside the heap; return their pages too
  }
}

// ---- stream relays ---------------------------------------------------------------------------

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

// The socket's end of stream: an empty DATA with FIN after everything queued.
void mux_session::queue_fin(const stream_ptr& s) {
  queue_data(s, {}, 0, true);
  s->sent_fin = true;
  finish_if_done(s);
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

}  // namespace culvert::shared::net
