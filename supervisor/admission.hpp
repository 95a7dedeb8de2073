// Admission: who may open or reclaim a tunnel, and which data connections reach a worker.
// Tokens (with the bad-token delay), limits per token and per address, names and ports, the
// DOMAIN/ACK exchange, and the proof a data connection gives (secret or route tag). Runs in
// the supervisor. Invariant: nothing reaches a tunnel before its token, id and secret, or route
// tag, have been checked; every refusal is one ERROR frame with the reason.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <string>

#include "shared/net/transport.hpp"
#include "shared/protocol/messages.hpp"
#include "supervisor/auth_throttle.hpp"
#include "supervisor/config.hpp"
#include "supervisor/handshake_place.hpp"
#include "supervisor/token_registry.hpp"
#include "supervisor/tunnel_lifecycle.hpp"
#include "supervisor/usage_counter.hpp"
#include "supervisor/worker_manager.hpp"

namespace culvert::supervisor {

class admission {
 public:
  // Reads the tokens now: the caller still runs as root, which may be the only reader.
  admission(boost::asio::io_context&, const config&, tunnel_lifecycle&, worker_manager&);

  const token_registry& tokens() const { return tokens_; }
  // True for an INIT that reclaims a live tunnel with its id and secret (its own budget).
  bool reclaims_known_tunnel(const shared::protocol::init_message&) const;

  // INIT: authenticates, then reclaims or opens a tunnel, sends DOMAIN and waits for the ACK.
  boost::asio::awaitable<void> open_tunnel(shared::net::transport, shared::protocol::init_message,
                                           handshake_place&);
  // DATA_INIT (clear-text servers): id and secret, checked here.
  boost::asio::awaitable<void> attach_data(shared::net::transport,
                                           shared::protocol::data_init_message, handshake_place&);
  // DATA_ROUTE (TLS servers): the route tag; the worker's TLS handshake proves the secret.
  boost::asio::awaitable<void> route_data(shared::net::transport,
                                          shared::protocol::data_route_message, handshake_place&);
  // Shutdown: bad tokens waiting out their delay are closed at once, without an answer.
  void stop_waiting();

 private:
  // The token's policy, or nullptr after the (throttled) refusal has been sent.
  boost::asio::awaitable<const token_policy*> authenticate(shared::net::transport&,
                                                           const std::string& token,
                                                           const std::string& source,
                                                           const std::string& peer_text,
                                                           handshake_place&);
  // A new tunnel for `init`, or nullptr after the refusal has been sent.
  boost::asio::awaitable<tunnel_ptr> new_tunnel(shared::net::transport&,
                                                const shared::protocol::init_message&,
                                                const token_policy&, const std::string& source,
                                                const std::string& peer_text);
  std::string label_of(const std::string& domain) const;  // "brave-otter-42" of its domain

  boost::asio::io_context& io_;
  const config& config_;
  tunnel_lifecycle& tunnels_;
  worker_manager& workers_;
  token_registry tokens_;
  auth_throttle throttle_;
  usage_counter tunnels_per_token_, tunnels_per_address_;
  usage_counter refusals_waiting_;     // bad tokens waiting out their delay: per source, "" for all
  boost::asio::steady_timer stopped_;  // never expires; cancel() ends every delayed refusal
};

}  // namespace culvert::supervisor
