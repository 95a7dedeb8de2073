// The supervisor: accepts control and data connections on one port, runs the handshake
// (INIT -> DOMAIN -> ACK), starts one worker per tunnel, hands data connections to that worker
// (SCM_RIGHTS), restarts dead workers, holds a lost client's domain for the grace period, and
// publishes every tunnel in the shared-memory table. Single-threaded (one io_context).
// Invariant: nothing a client sends can stop the supervisor or touch another tenant's tunnel;
// a slot, domain and port return to the pool only after their worker has exited.
#pragma once

#include <sys/types.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "shared/ipc/fd_channel.hpp"
#include "shared/ipc/tunnel_table.hpp"
#include "shared/log/line_budget.hpp"
#include "shared/net/transport.hpp"
#include "shared/protocol/control_link.hpp"
#include "shared/protocol/messages.hpp"
#include "supervisor/auth_throttle.hpp"
#include "supervisor/config.hpp"
#include "supervisor/domain_pool.hpp"
#include "supervisor/handshake_slots.hpp"
#include "supervisor/privileges.hpp"
#include "supervisor/public_ports.hpp"
#include "supervisor/token_registry.hpp"
#include "supervisor/usage_counter.hpp"
#include "supervisor/worker_spawner.hpp"

namespace culvert::supervisor {

struct tunnel {
  tunnel(boost::asio::io_context& io, boost::asio::ip::tcp::acceptor l)
      : listener(std::move(l)), grace_timer(io), stop_timer(io) {}

  std::uint64_t id = 0;
  shared::protocol::secret_bytes secret{};
  shared::protocol::route_tag_bytes route_tag{};  // TLS servers: what DATA_ROUTE must carry
  std::string domain;
  std::uint16_t port = 0;
  shared::protocol::tunnel_kind kind = shared::protocol::tunnel_kind::http;
  std::uint32_t slot = 0;
  std::int64_t created_unix_ms = 0;
  shared::ipc::slot_state state = shared::ipc::slot_state::starting;

  // Kept open by the supervisor so that a restarted worker inherits the same socket.
  boost::asio::ip::tcp::acceptor listener;
  std::shared_ptr<shared::protocol::control_link> control;  // empty while held
  std::string client_addr;
  boost::asio::steady_timer grace_timer;
  boost::asio::steady_timer stop_timer;  // restart back-off, or SIGKILL deadline while stopping

  pid_t worker_pid = 0;
  std::shared_ptr<shared::ipc::channel_socket> channel;
  bool worker_ready = false;
  struct pending_data {
    boost::asio::ip::tcp::socket socket;
    bool tls;  // routed by DATA_ROUTE: the worker runs the TLS handshake
  };
  std::deque<pending_data> waiting_data;  // arrived while no worker was ready
  std::uint32_t restarts = 0;
  // Consecutive exits soon after start before doing any work (for back-off and giving up).
  std::uint32_t quick_failures = 0;
  std::chrono::steady_clock::time_point worker_started;
  bool worker_did_work = false;  // the current worker has reported a data connection
  std::uint16_t data_connections = 0;
  bool reopen_pending = false;  // tell the client to re-open data connections once the worker is up
  std::vector<usage_counter::lease> leases;  // its share of the per-token and per-address limits
};

class supervisor {
 public:
  supervisor(boost::asio::io_context&, config);
  ~supervisor();
  // Binds the control port, creates the shared table, installs signal handlers.
  void start();
  boost::asio::ip::tcp::endpoint control_endpoint() const { return control_.local_endpoint(); }

 private:
  using tunnel_ptr = std::shared_ptr<tunnel>;
  // What a connection in the handshake holds: its staged place and its address's share. Both are
  // given back while a bad token waits out its delay, and before the socket leaves the handshake.
  struct handshake_place {
    handshake_slots::ticket ticket;
    std::optional<usage_counter::lease> per_address;
    void release() {
      ticket.release();
      per_address.reset();
    }
  };

  boost::asio::awaitable<void> accept_loop();
  boost::asio::awaitable<void> handshake(boost::asio::ip::tcp::socket);
  boost::asio::awaitable<void> open_tunnel(shared::net::transport, shared::protocol::init_message,
                                           handshake_place&);
  boost::asio::awaitable<void> attach_data(shared::net::transport,
                                           shared::protocol::data_init_message, handshake_place&);
  boost::asio::awaitable<void> route_data(shared::net::transport,
                                          shared::protocol::data_route_message, handshake_place&);
  boost::asio::awaitable<void> deliver_data(tunnel_ptr, boost::asio::ip::tcp::socket, bool tls);
  boost::asio::awaitable<void> worker_channel_loop(tunnel_ptr,
                                                   std::shared_ptr<shared::ipc::channel_socket>);
  boost::asio::awaitable<void> hand_over(tunnel_ptr, boost::asio::ip::tcp::socket, bool tls);
  boost::asio::awaitable<void> tell_worker(std::shared_ptr<shared::ipc::channel_socket>,
                                           std::string message);
  boost::asio::awaitable<void> reap_loop();
  boost::asio::awaitable<void> shutdown();

  // The token's policy, or nullptr after the (throttled) refusal has been sent.
  boost::asio::awaitable<const token_policy*> authenticate(shared::net::transport&,
                                                           const std::string& token,
                                                           const std::string& source,
                                                           const std::string& peer_text,
                                                           handshake_place&);
  // True if `id` names a live tunnel and `secret` is its secret (compared in constant time).
  bool proves_tunnel(std::uint64_t id, const shared::protocol::secret_bytes& secret) const;
  tunnel_ptr find_by_id(std::uint64_t id) const;
  tunnel_ptr find_by_route_tag(const shared::protocol::route_tag_bytes&) const;
  std::string label_of(const std::string& domain) const;  // "brave-otter-42" of its domain
  void attach_control(const tunnel_ptr&, shared::net::transport);
  void start_spawner();
  void start_worker(const tunnel_ptr&);
  void signal_worker(const tunnel&, int signal_number);
  void on_worker_exit(pid_t, int status);
  void restart_worker(const tunnel_ptr&);
  void hold(const tunnel_ptr&, const std::string& reason);
  void stop_tunnel(const tunnel_ptr&, const std::string& reason);
  void finish_tunnel(const tunnel_ptr&);
  void publish(const tunnel&);
  void wait_for_hangup();
  std::string public_url(const tunnel&) const;

  boost::asio::io_context& io_;
  config config_;
  boost::asio::ip::tcp::acceptor control_;
  std::unique_ptr<shared::ipc::tunnel_table_owner> table_;
  domain_pool domains_;
  public_ports ports_;
  std::string worker_path_;
  std::unique_ptr<worker_spawner> spawner_;  // starts and signals workers (see worker_spawner.hpp)
  token_registry tokens_;
  auth_throttle throttle_;
  usage_counter tunnels_per_token_, tunnels_per_address_, handshakes_per_address_;
  usage_counter
      refusals_waiting_;  // bad tokens waiting out their delay: per source, and "" for all
  handshake_slots handshakes_;
  std::uint64_t shed_logged_ = 0;  // handshakes_.shed_total() when last logged
  shared::log::line_budget shed_log_{1, std::chrono::seconds(10)};
  shared::log::line_budget peer_error_log_{10, std::chrono::seconds(10)};  // clients' ERROR texts
  std::optional<account> worker_account_;           // set when started as root: workers run as it
  std::unique_ptr<boost::asio::ssl::context> tls_;  // control connections' certificate; or none
  std::map<std::uint64_t, tunnel_ptr> tunnels_;     // by tunnel id
  std::map<pid_t, tunnel_ptr> by_worker_pid_;
  // TLS servers: by the first 8 bytes of the route tag; the whole tag is then compared in
  // constant time, so timing tells nothing beyond those bytes, which alone route nothing.
  std::map<std::uint64_t, tunnel_ptr> by_route_;
  std::vector<std::uint32_t> free_slots_;
  boost::asio::signal_set child_signals_;
  boost::asio::signal_set stop_signals_;
  boost::asio::signal_set hangup_signal_;
  bool stopping_ = false;
};

}  // namespace culvert::supervisor
