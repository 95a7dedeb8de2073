// The control port: accepts every control and data connection, bounds its handshake (places,
// per-address share, deadline), tells TLS from clear text by the first byte, reads the first
// frame and hands the connection to admission. Runs in the supervisor.
// Invariant: a connection is never refused for want of room (the slowest handshake is shed
// instead), and nothing but INIT, DATA_INIT or DATA_ROUTE of at most a control frame is read.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <memory>

#include "shared/log/line_budget.hpp"
#include "supervisor/admission.hpp"
#include "supervisor/config.hpp"
#include "supervisor/handshake_slots.hpp"
#include "supervisor/usage_counter.hpp"

namespace culvert::supervisor {

class control_listener {
 public:
  // Reads the TLS certificate and key (--tls-cert, --tls-key) now, while still root.
  control_listener(boost::asio::io_context&, const config&, admission&);

  bool tls() const { return tls_ != nullptr; }
  void listen();  // binds --control; throws boost::system::system_error naming the address
  void start();   // accepts until close()
  // No new connection; every handshake still holding a place ends at once.
  void close();
  boost::asio::ip::tcp::endpoint local_endpoint() const { return acceptor_.local_endpoint(); }

 private:
  boost::asio::awaitable<void> accept_loop();
  boost::asio::awaitable<void> handshake(boost::asio::ip::tcp::socket);
  void log_shed();

  boost::asio::io_context& io_;
  const config& config_;
  admission& admission_;
  std::unique_ptr<boost::asio::ssl::context> tls_;  // the control port's certificate; or none
  boost::asio::ip::tcp::acceptor acceptor_;
  handshake_slots places_;
  usage_counter handshakes_per_address_;
  std::uint64_t shed_logged_ = 0;  // places_.shed_total() when last logged
  shared::log::line_budget shed_log_{1, std::chrono::seconds(10)};
  bool closed_ = false;
};

}  // namespace culvert::supervisor
