// The worker: one process per tunnel (domain). It owns the domain's public listener, adopts the
// client's data connections that the supervisor hands over a Unix channel, and relays each
// visitor as a stream over them. It updates its own slot's counters in the shared table.
// Invariant: visitors are accepted only while a data connection exists (otherwise they wait in
// the kernel's backlog), and every visitor socket resets (RST) if the relay ends abnormally.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include "shared/ipc/fd_channel.hpp"
#include "shared/ipc/tunnel_table.hpp"
#include "shared/net/buffer_pool.hpp"
#include "shared/net/mux_session.hpp"

namespace culvert::worker {

struct worker_options {
  int channel_fd = 3;   // SOCK_SEQPACKET to the supervisor
  int listener_fd = 4;  // the public listening socket, bound by the supervisor
  std::string segment;  // shared-memory table name
  std::uint32_t slot = 0;
  std::string domain;
  std::string log_level = "info";
  std::size_t max_visitors = 16384;  // open visitor connections; more are reset at once
  std::chrono::seconds drain_timeout{5};
  shared::net::mux_settings mux;
};

// Exit codes (the supervisor reads them).
inline constexpr int exit_ok = 0;
inline constexpr int exit_fatal = 78;  // bad arguments or setup: do not respawn

class worker {
 public:
  worker(boost::asio::io_context&, worker_options);
  void start();

 private:
  boost::asio::awaitable<void> channel_loop();
  boost::asio::awaitable<void> accept_loop();
  boost::asio::awaitable<void> adopt(boost::asio::ip::tcp::socket connection);
  boost::asio::awaitable<void> drain_and_exit();
  std::shared_ptr<shared::net::mux_session> least_loaded_session();
  void report_data_connections();

  boost::asio::io_context& io_;
  worker_options options_;
  shared::ipc::channel_socket channel_;
  boost::asio::ip::tcp::acceptor listener_;
  shared::ipc::slot_counter_writer table_;
  shared::net::buffer_pool pool_;
  std::vector<std::shared_ptr<shared::net::mux_session>> sessions_;
  boost::asio::steady_timer sessions_changed_;
  boost::asio::signal_set signals_;
  bool stopping_ = false;
};

}  // namespace culvert::worker
