// The worker: one process per tunnel (domain). It owns the domain's public listener, adopts the
// client's data connections that the supervisor hands over a Unix channel, and relays each
// visitor as a stream over them. It updates its own slot's counters in the shared table.
// Invariant: visitors are accepted only while a data connection exists (otherwise they wait in
// the kernel's backlog); one accepted just as the last data connection went (the client is
// reconnecting) waits for the next one for a bounded time; every visitor socket resets (RST)
// if the relay ends abnormally or never starts.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "shared/ipc/fd_channel.hpp"
#include "shared/ipc/tunnel_table.hpp"
#include "shared/ipc/worker_channel.hpp"
#include "shared/log/rate_limited.hpp"
#include "shared/net/buffer_pool.hpp"
#include "shared/net/mux_session.hpp"
#include "worker/source_limit.hpp"
#if CULVERT_WITH_TLS
#include "shared/tls/tls_contexts.hpp"
#endif

namespace culvert::worker {

struct worker_options {
  int channel_fd = 3;   // SOCK_SEQPACKET to the supervisor
  int listener_fd = 4;  // the public listening socket, bound by the supervisor
  int table_fd = 5;  // the shared table, read-write: the worker maps its own page, then closes it
  std::string segment;  // shared-memory table name
  std::uint32_t slot = 0;
  std::string domain;
  std::string log_level = "info";
  std::size_t max_visitors = 16384;             // open visitor connections; more are reset at once
  std::uint32_t max_visitors_per_source = 256;  // per IPv4 address or IPv6 /64; more are reset
  std::size_t buffer_budget_mb = 128;           // relay buffers of every stream together
  std::chrono::seconds drain_timeout{5};
  std::chrono::seconds handshake_timeout{5};  // TLS data connections
  std::chrono::seconds visitor_wait{10};      // for a data connection, once accepted
  shared::net::mux_settings mux;
};

// At most this many TLS handshakes at once; more data connections are dropped.
inline constexpr unsigned max_tls_handshakes = 32;

// Exit codes (the supervisor reads them): shared/ipc/worker_channel.hpp.
using shared::ipc::worker_channel::exit_fatal;
using shared::ipc::worker_channel::exit_ok;

class worker {
 public:
  worker(boost::asio::io_context&, worker_options);
  void start();
  // What main returns once io_context::run() has returned.
  int exit_code() const { return exit_code_; }
  // The start of the one page of the shared table this worker maps (see sandbox.hpp).
  const void* table_page();

 private:
  boost::asio::awaitable<void> channel_loop();
  boost::asio::awaitable<void> accept_loop();
  // A data connection handed over by the supervisor; `tls`: run the PSK handshake first.
  boost::asio::awaitable<void> adopt(boost::asio::ip::tcp::socket, bool tls);
  boost::asio::awaitable<bool> wait_for_session(std::chrono::steady_clock::duration limit);
  boost::asio::awaitable<void> relay_when_connected(boost::asio::ip::tcp::socket visitor,
                                                    std::string peer);
  bool relay(boost::asio::ip::tcp::socket& visitor, const std::string& peer);
  void visitor_gone(const std::string& peer);  // a counted visitor's stream ended
  boost::asio::awaitable<void> drain_and_exit();
  void stop_now(const std::string& reason);
  std::shared_ptr<shared::net::mux_session> least_loaded_session();
  void report_data_connections();
  boost::asio::awaitable<void> tell_supervisor(std::string message);

  boost::asio::io_context& io_;
  worker_options options_;
  shared::ipc::channel_socket channel_;
  boost::asio::ip::tcp::acceptor listener_;
  shared::ipc::slot_counter_writer table_;
  shared::net::buffer_pool pool_;
  shared::net::window_budget windows_;  // window growth of every stream, beside the pool
  std::vector<std::shared_ptr<shared::net::mux_session>> sessions_;
  boost::asio::steady_timer sessions_changed_;  // never expires; cancel() wakes every waiter
  boost::asio::signal_set signals_;
#if CULVERT_WITH_TLS
  // TLS data connections: only this tunnel's key opens them. Made when the key arrives, so a
  // clear-text tunnel's worker never initialises OpenSSL (megabytes of memory).
  std::unique_ptr<shared::tls::psk_server> psk_;
#endif
  unsigned tls_handshakes_ = 0;      // in progress
  std::size_t parked_visitors_ = 0;  // accepted, waiting for a data connection
  source_limit sources_;             // visitors open (or parked) per source address
  shared::log::rate_limited refusal_log_;
  bool stopping_ = false;  // no new visitors or data connections
  bool stopped_ = false;   // everything closed: the event loop runs out of work
  int exit_code_ = exit_ok;
};

}  // namespace culvert::worker
