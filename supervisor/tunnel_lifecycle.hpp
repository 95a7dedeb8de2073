// The tunnel life cycle: starting -> active (a control link) <-> held (client lost, grace
// period) -> stopping (worker told to exit) -> released (slot, name and port back in the pools).
// Owns every tunnel, the pools they draw from and the shared table they are published in.
// Runs in the supervisor. Invariant: a slot, domain and port return to their pools only once
// no worker runs for the tunnel, so nothing else can be writing its slot.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shared/ipc/tunnel_table.hpp"
#include "shared/log/line_budget.hpp"
#include "shared/net/transport.hpp"
#include "shared/protocol/messages.hpp"
#include "supervisor/config.hpp"
#include "supervisor/domain_pool.hpp"
#include "supervisor/public_ports.hpp"
#include "supervisor/tunnel.hpp"
#include "supervisor/usage_counter.hpp"

namespace culvert::supervisor {

class worker_manager;

class tunnel_lifecycle {
 public:
  // `route_by_tag`: TLS servers, whose data connections name their tunnel by its route tag.
  tunnel_lifecycle(boost::asio::io_context&, const config&, worker_manager&, bool route_by_tag);

  // Creates (or takes over) the shared table; `owner_uid` is the account it is handed to.
  void create_table(std::optional<uid_t> owner_uid);
  shared::ipc::tunnel_table_owner& table() { return *table_; }
  domain_pool& domains() { return domains_; }
  public_ports& ports() { return ports_; }

  bool has_free_slot() const { return !free_slots_.empty(); }
  // Registers a new tunnel (fresh id, secret and route tag, a free slot) and publishes it.
  // Call only when has_free_slot().
  tunnel_ptr add(boost::asio::ip::tcp::acceptor listener, std::string domain,
                 shared::protocol::tunnel_kind, std::vector<usage_counter::lease> leases);
  tunnel_ptr find_by_id(std::uint64_t id) const;
  tunnel_ptr find_by_route_tag(const shared::protocol::route_tag_bytes&) const;
  // True if `id` names a live tunnel and `secret` is its secret (compared in constant time).
  bool proves(std::uint64_t id, const shared::protocol::secret_bytes& secret) const;

  // starting/held -> active: the client's control link (replacing an earlier one).
  void attach_control(const tunnel_ptr&, shared::net::transport);
  void hold(const tunnel_ptr&, const std::string& reason);  // active -> held
  void stop(const tunnel_ptr&, const std::string& reason);  // any -> stopping
  void release(const tunnel_ptr&);                          // -> released (no worker runs)
  void publish(const tunnel&);

  // Shutdown: stops every tunnel and calls `done` once the last one is released (at once if
  // none is left). New tunnels are refused from now on.
  void stop_all(std::function<void()> done);
  bool shutting_down() const { return shutting_down_; }
  std::size_t size() const { return tunnels_.size(); }

 private:
  boost::asio::io_context& io_;
  const config& config_;
  worker_manager& workers_;
  const bool route_by_tag_;
  std::unique_ptr<shared::ipc::tunnel_table_owner> table_;
  domain_pool domains_;
  public_ports ports_;
  std::vector<std::uint32_t> free_slots_;
  std::map<std::uint64_t, tunnel_ptr> tunnels_;  // by tunnel id
  // TLS servers: by the first 8 bytes of the route tag; the whole tag is then compared in
  // constant time, so timing tells nothing beyond those bytes, which alone route nothing.
  std::map<std::uint64_t, tunnel_ptr> by_route_;
  shared::log::line_budget peer_error_log_{10, std::chrono::seconds(10)};  // clients' ERRORs
  bool shutting_down_ = false;
  std::function<void()> all_released_;
};

}  // namespace culvert::supervisor
