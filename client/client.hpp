// The culvert client: opens a tunnel over the control connection (INIT -> DOMAIN -> ACK), keeps
// its data connections open (DATA_INIT -> DATA_READY, then a multiplexer that dials the local
// service once per visitor stream), prints the public address and, for http tunnels, one line
// per request. Reconnects with back-off and reclaims its tunnel after any connection loss.
// Runs in the culvert CLI on one io_context thread.
// Invariant: every wait on the network is bounded; the only way out is stop() or a refusal, and
// either one cancels everything the client started, so that io_context::run() returns for lack
// of work (or, past stop_deadline, because the client stopped it, naming what was left).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "client/client_options.hpp"
#include "client/pending_work.hpp"
#include "client/state_file.hpp"
#include "shared/net/buffer_pool.hpp"
#include "shared/net/mux_session.hpp"
#include "shared/net/transport.hpp"
#include "shared/protocol/control_link.hpp"
#include "shared/protocol/messages.hpp"
#include "shared/tls/tls_contexts.hpp"

namespace culvert::client {

// How long stop() waits for what it cancelled to finish before it stops the io_context.
inline constexpr std::chrono::seconds stop_deadline{2};

class client {
 public:
  // `out` receives the user-facing lines (Forwarding ..., the request log).
  client(boost::asio::io_context&, client_options, std::ostream& out);
  ~client();
  client(const client&) = delete;
  client& operator=(const client&) = delete;
  // `on_stop` runs once, when the shutdown begins (main cancels its signal wait there).
  void start(std::function<void()> on_stop = {});
  // Ctrl-C. The polite stage: closes the control link and every data connection (their streams
  // are reset), cuts every back-off, dial and handshake short; io_context::run() returns once all
  // of it has finished. The forced stage, if that takes longer than stop_deadline: logs what is
  // left and stops the io_context (then see forced()).
  void stop();
  int exit_code() const { return exit_code_; }
  // The forced stage stopped the io_context: coroutine frames that point into this client are
  // still queued in it and must be destroyed (io_context shutdown) before the client is.
  bool forced() const { return forced_; }

 private:
  // What the server handed out; `generation` changes whenever the tunnel does.
  struct tunnel_info {
    shared::protocol::domain_message offer;
    std::uint64_t generation = 0;
    shared::tls::psk_bytes data_key{};  // TLS data connections' key, derived from the secret
  };

  boost::asio::awaitable<void> run(pending_work::lease);
  boost::asio::awaitable<std::optional<boost::asio::ip::tcp::socket>> connect_to(
      const std::string& host, std::uint16_t port);
  // One control session: handshake, then wait until the control connection is lost.
  // Returns false when the client must give up (a refusal, printed).
  boost::asio::awaitable<bool> control_session(bool first);
  boost::asio::awaitable<void> data_loop(std::uint64_t generation, unsigned index,
                                         pending_work::lease);
  // A data connection made ready for the multiplexer: DATA_INIT in clear, or DATA_ROUTE and a
  // TLS handshake keyed by the tunnel's secret. nullopt: try again later.
  boost::asio::awaitable<std::optional<shared::net::transport>> open_data_connection(
      tunnel_info, unsigned index);
  boost::asio::awaitable<std::optional<boost::asio::ip::tcp::socket>> dial_local();
  boost::asio::awaitable<void> pause(std::chrono::milliseconds);
  // `work` unless stop() comes first: then `work` is cancelled, awaited, and nullopt returned.
  template <typename T>
  boost::asio::awaitable<std::optional<T>> unless_stopped(boost::asio::awaitable<T> work);
  // False (after a warning) if clear text was chosen for a loopback server and this connection
  // reached another address (the name was resolved again since).
  bool reaches_loopback(const boost::asio::ip::tcp::socket&) const;
  // A refusal or a fatal error: stops with `code`, unless a stop is already under way.
  void finish(int code);
  void close_sessions(const std::string& reason);
  void on_deadline();

  boost::asio::io_context& io_;
  client_options options_;
  std::ostream& out_;
  state_file state_;
  std::string server_host_;
  std::uint16_t server_port_ = 0;
  shared::net::buffer_pool pool_;
  shared::net::window_budget windows_;  // window growth of every stream, beside the pool
  std::unique_ptr<boost::asio::ssl::context> control_tls_;  // verifies the server's certificate
  std::unique_ptr<boost::asio::ssl::context> data_tls_;     // PSK for data connections
  std::optional<tunnel_info> tunnel_;
  std::uint64_t generation_ = 0;
  std::shared_ptr<shared::protocol::control_link> control_;
  std::vector<std::shared_ptr<shared::net::mux_session>> sessions_;
  boost::asio::steady_timer control_lost_;  // cancelled when the control connection ends
  boost::asio::steady_timer reopen_;        // cancelled to cut every back-off short (REOPEN)
  // Expires at time_point::min() once stop() is called: a wait on it, started before or after,
  // completes then. Raced (unless_stopped) against every wait that stop() must cut short.
  boost::asio::steady_timer stopped_;
  boost::asio::steady_timer deadline_;  // the forced stage; cancelled once work_ is empty
  pending_work work_;
  std::function<void()> on_stop_;
  bool stopping_ = false;
  bool forced_ = false;
  int exit_code_ = exit_ok;
};

}  // namespace culvert::client
