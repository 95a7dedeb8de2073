// One multiplexed data connection: many visitor streams over one TCP connection between a worker
// (role server: opens a stream per visitor) and a client (role client: dials the local service
// per stream). Runs inside the single io_context thread of the worker or the client.
// Invariants: a stream's bytes are relayed in order with per-stream credit (a slow reader only
// stops its own stream); FIN maps to shutdown(SHUT_WR) after buffered bytes are flushed; any
// abnormal end resets the stream's socket (RST), never a clean FIN; every frame from the peer is
// validated (docs/protocol.md) and a violation ends the whole session.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "shared/log/rate_limited.hpp"
#include "shared/net/buffer_pool.hpp"
#include "shared/net/transport.hpp"
#include "shared/net/window_tuner.hpp"
#include "shared/protocol/frame.hpp"

namespace culvert::shared::net {

// Compiled keepalive defaults (docs/protocol.md, section 6.5): the client runs with them; the
// worker is given the supervisor's heartbeat settings instead.
inline constexpr std::chrono::milliseconds default_keepalive_interval{5000};
inline constexpr std::chrono::milliseconds default_idle_timeout{30000};

struct mux_settings {
  std::uint32_t initial_window = 256 * 1024;    // per stream and direction, in bytes
  std::uint32_t max_window = 16 * 1024 * 1024;  // auto-tuning cap (bandwidth-delay product)
  std::chrono::milliseconds keepalive_interval = default_keepalive_interval;
  // Silence (no frame at all) that ends a session.
  std::chrono::milliseconds idle_timeout = default_idle_timeout;
  std::size_t max_streams = 16384;
  std::size_t chunks_in_flight = 2;  // per stream, socket -> connection direction
  // A stream with no byte moved either way for this long is reset (zero: never). Long, because
  // SSH and database sessions sit idle; what it reclaims is a stalled stream's buffers.
  std::chrono::milliseconds stream_idle_timeout{600000};
  // Client role: local dials in progress at once; an OPEN beyond them waits for one to finish.
  std::size_t max_dials = 256;
};

// Watches the bytes of one stream without altering them (the client's HTTP request log).
class stream_observer {
 public:
  virtual ~stream_observer() = default;
  virtual void on_from_peer(std::span<const char> bytes) = 0;    // arrived over the connection
  virtual void on_from_socket(std::span<const char> bytes) = 0;  // read from the local socket
  virtual void on_end(bool abnormal) = 0;
};

struct stream_report {
  std::uint32_t id = 0;
  std::string peer;  // the visitor's address, as the worker saw it
  std::uint64_t bytes_from_socket = 0, bytes_to_socket = 0;
  std::chrono::steady_clock::duration lifetime{};
  bool abnormal = false;
  std::string reason;
};

struct mux_hooks {
  // Client role: connect to the local service for a new stream (nullopt = refuse: stream reset).
  std::function<boost::asio::awaitable<std::optional<boost::asio::ip::tcp::socket>>()> dial;
  std::function<std::unique_ptr<stream_observer>()> make_observer;  // optional
  std::function<void(const stream_report&)> on_stream_closed;       // optional
  std::function<void(const std::string& reason)> on_closed;         // once, when the session ends
  // Optional traffic counters: bytes read from / written to stream sockets, and whether they moved
  // by splice (socket to pipe to socket) rather than by copy.
  std::function<void(std::uint64_t from_socket, std::uint64_t to_socket, bool spliced)> on_traffic;
};

// Stream bytes by path, both directions: splice moves them socket to socket inside the kernel,
// copying reads them into this process (TLS, observed http streams, small reads, a full pipe).
struct relay_stats {
  std::uint64_t spliced = 0;
  std::uint64_t copied = 0;
  std::uint64_t pipe_overflows = 0;     // a stream's pipe was full: the rest of a frame was copied
  std::uint32_t largest_data_sent = 0;  // payload bytes of the largest DATA frame queued
  std::uint32_t largest_window = 0;     // the largest receive window auto-tuning gave a stream
  std::uint64_t window_samples = 0;     // delivery-rate samples auto-tuning judged (any stream)
};

class mux_session : public std::enable_shared_from_this<mux_session> {
 public:
  enum class role { server, client };

  // `pool` and `windows` serve every session of the process: they outlive it and its streams.
  mux_session(transport connection, role, mux_settings, mux_hooks, buffer_pool& pool,
              window_budget& windows);
  ~mux_session();

  // Starts reading, writing and keepalives. Call once, on the io_context thread.
  void start();
  // Server role: relays a visitor socket as a new stream. False if the session is closed or full
  // (the caller then resets the visitor).
  bool open_stream(boost::asio::ip::tcp::socket visitor, std::string peer);
  // Ends the session now: every stream is reset, the connection closed.
  void close(const std::string& reason);

  bool is_open() const { return open_; }
  std::size_t stream_count() const { return streams_.size(); }
  std::size_t dials_in_flight() const { return dials_in_flight_; }
  // Smoothed round-trip time of the connection, from PING echoes (zero until measured).
  std::chrono::microseconds rtt() const { return rtt_; }
  std::chrono::microseconds min_rtt() const { return min_rtt_; }
  const relay_stats& stats() const { return stats_; }

 private:
  struct stream;
  struct out_frame;
  using stream_ptr = std::shared_ptr<stream>;

  // Stream life cycle (mux_stream_lifecycle.cpp).
  void start_relays(const stream_ptr&);
  void start_socket_writer(const stream_ptr&);
  bool handle_open(std::uint32_t id, std::span<const std::uint8_t> payload);
  void start_waiting_dial();
  boost::asio::awaitable<void> dial_then_relay(stream_ptr);
  boost::asio::awaitable<void> wait_until_closed(stream_ptr);
  void queue_fin(const stream_ptr&);
  void finish_if_done(const stream_ptr&);
  void reset_stream(const stream_ptr&, const std::string& reason, bool tell_peer);
  void remove_stream(const stream_ptr&, bool abnormal, const std::string& reason);
  boost::asio::awaitable<void> stream_idle_loop();

  // Frame reader (mux_reader.cpp). Return false after a protocol violation (session closed).
  boost::asio::awaitable<void> read_loop();
  bool parse_buffered();
  void note_frame_arrival();
  bool handle_frame(const protocol::frame_header&, std::span<const std::uint8_t> payload);
  bool begin_incoming(const protocol::frame_header&);
  void end_incoming();
  bool handle_window(std::uint32_t id, std::uint32_t increment);
  void handle_reset(std::uint32_t id);
  void protocol_violation(const std::string& what);

  // Writer (mux_writer.cpp). `wake`: false leaves the writer asleep until the next queued frame
  // or wake_writer().
  void wake_writer();
  void queue_control(protocol::frame_type, std::uint8_t flags, std::uint32_t stream_id,
                     std::span<const std::uint8_t> payload, bool wake = true);
  void queue_data(const stream_ptr&, chunk, std::uint32_t length, bool fin);
  boost::asio::awaitable<void> write_loop();

  // A stream's relays and the copying path (mux_relay.cpp).
  boost::asio::awaitable<void> socket_to_peer(stream_ptr);
  boost::asio::awaitable<void> peer_to_socket(stream_ptr);
  void deliver_incoming(std::span<const std::uint8_t> payload);
  void gather_pending(const stream&, std::vector<boost::asio::const_buffer>&);
  void pending_written(stream&, std::size_t bytes);
  void counted_from_socket(stream&, std::size_t bytes, bool spliced);
  void counted_to_socket(stream&, std::size_t bytes, bool spliced);
  void buffer_for_socket(stream&, std::span<const std::uint8_t> bytes);
  void credit_consumed(stream&, std::size_t bytes);

  // The splice paths (mux_splice.cpp).
  boost::asio::awaitable<bool> splice_from_socket(stream_ptr);
  boost::asio::awaitable<boost::system::error_code> splice_payload(out_frame&);
  bool incoming_can_splice();
  boost::asio::awaitable<bool> splice_incoming();
  bool drain_rx_pipe(const stream_ptr&);
  void release_rx_pipe_if_empty(stream&);

  // Keepalive, RTT and idle memory (mux_keepalive.cpp).
  boost::asio::awaitable<void> keepalive_loop();
  void handle_ping(const protocol::frame_header&, std::span<const std::uint8_t> payload);
  void release_idle_memory();

  transport connection_;
  role role_;
  mux_settings settings_;
  mux_hooks hooks_;
  buffer_pool& pool_;
  window_tuner tuner_;  // every stream's receive window, within the process's window_budget
  bool open_ = true;
  std::string close_reason_;

  std::unique_ptr<std::uint8_t[]> read_buffer_;  // frames from the peer; see read_loop
  std::size_t read_begin_ = 0, read_end_ = 0;    // unparsed bytes
  struct incoming_data {
    stream_ptr stream;       // null: a stream that ended here, its bytes are dropped
    std::uint32_t left = 0;  // payload bytes of the current DATA frame still to come
    bool fin = false;
    bool copy = false;  // the stream's pipe is full: the rest of this frame takes the copying path
  } incoming_;
  bool bulk_in_ = false;                  // the last DATA frame was large and could splice
  std::uint64_t pool_takes_at_tick_ = 0;  // the shared pool's takes() at the last keepalive
  bool relayed_since_tick_ = false;       // stream bytes moved since the last keepalive

  std::unordered_map<std::uint32_t, stream_ptr> streams_;
  std::uint32_t last_stream_id_ = 0;      // highest id opened so far (ids strictly increase)
  std::size_t dials_in_flight_ = 0;       // client role: dial_then_relay still connecting
  std::deque<stream_ptr> waiting_dials_;  // client role: opened past max_dials, in order

  std::deque<out_frame> control_queue_;  // sent ahead of data: window, ping, open, reset
  std::deque<out_frame> data_queue_;
  boost::asio::steady_timer writer_wake_;
  boost::asio::steady_timer keepalive_timer_;
  boost::asio::steady_timer stream_idle_timer_;
  shared::log::rate_limited refusal_log_;  // streams refused for the budget or the dial cap
  relay_stats stats_;
  bool splice_allowed_;  // clear text: stream bytes may bypass user space (TLS must see them)

  std::chrono::steady_clock::time_point last_received_;
  std::chrono::microseconds rtt_{0};      // smoothed, from keepalive pings
  std::chrono::microseconds min_rtt_{0};  // the least sample within min_rtt_lifetime
  std::chrono::steady_clock::time_point min_rtt_taken_;
  // Flood limits: cheap frames per one-second window.
  std::chrono::steady_clock::time_point flood_window_start_;
  std::uint32_t pings_in_window_ = 0;
  std::uint32_t stale_frames_in_window_ = 0;
};

}  // namespace culvert::shared::net
