// The supervisor: wires its duties together (control_listener -> admission -> tunnel_lifecycle
// <-> worker_manager), drops root once what needs it is done, and runs the two-stage shutdown.
// Single-threaded (one io_context). Invariant: nothing a client sends can stop the supervisor
// or touch another tenant's tunnel; on shutdown every coroutine it started ends before it is
// destroyed, so io_context::run() returns with no work left.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <optional>

#include "supervisor/admission.hpp"
#include "supervisor/config.hpp"
#include "supervisor/control_listener.hpp"
#include "supervisor/privileges.hpp"
#include "supervisor/tunnel_lifecycle.hpp"
#include "supervisor/worker_manager.hpp"

namespace culvert::supervisor {

class supervisor {
 public:
  // Reads the tokens and the TLS key now, while the files are still readable.
  supervisor(boost::asio::io_context&, config);
  // Binds the control port, creates the shared table, drops root, installs signal handlers.
  void start();
  boost::asio::ip::tcp::endpoint control_endpoint() const { return listener_.local_endpoint(); }

 private:
  void drop_root();
  void wait_for_hangup();
  boost::asio::awaitable<void> shutdown();

  boost::asio::io_context& io_;
  const config config_;
  std::optional<account> worker_account_;  // set when started as root: workers run as it
  tunnel_lifecycle tunnels_;
  worker_manager workers_;
  admission admission_;
  control_listener listener_;
  boost::asio::signal_set stop_signals_;
  boost::asio::signal_set hangup_signal_;
  boost::asio::steady_timer shutdown_deadline_;
  bool stopping_ = false;
};

}  // namespace culvert::supervisor
