// The tunnel life cycle (tunnel_lifecycle.hpp): registering, holding, stopping and releasing
// tunnels, and publishing them in the shared table. Supervisor, one io_context thread.
#include "supervisor/tunnel_lifecycle.hpp"

#include <spdlog/spdlog.h>

#include <cstring>

#include "shared/log/printable.hpp"
#include "shared/net/address.hpp"
#include "shared/tls/tls_contexts.hpp"
#include "shared/util/random.hpp"
#include "supervisor/worker_manager.hpp"

namespace culvert::supervisor {

namespace proto = shared::protocol;
namespace ipc = shared::ipc;

namespace {

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Where a route tag is filed in by_route_: its first 8 bytes.
std::uint64_t route_index(const proto::route_tag_bytes& tag) {
  std::uint64_t index = 0;
  std::memcpy(&index, tag.data(), sizeof(index));
  return index;
}

ipc::tunnel_kind table_kind(proto::tunnel_kind kind) {
  return kind == proto::tunnel_kind::tcp ? ipc::tunnel_kind::tcp : ipc::tunnel_kind::http;
}

}  // namespace

tunnel_lifecycle::tunnel_lifecycle(boost::asio::io_context& io, const config& cfg,
                                   worker_manager& workers, bool route_by_tag)
    : io_(io),
      config_(cfg),
      workers_(workers),
      route_by_tag_(route_by_tag),
      domains_(cfg.base_domain, shared::util::random_u64()),
      ports_(io, cfg.public_bind, cfg.port_min, cfg.port_max) {
  for (std::uint32_t slot = cfg.max_tunnels; slot > 0; --slot) free_slots_.push_back(slot - 1);
}

void tunnel_lifecycle::create_table(std::optional<uid_t> owner_uid) {
  // A segment left by an earlier run was handed to the worker account: that owner is ours too.
  table_ = std::make_unique<ipc::tunnel_table_owner>(config_.instance, config_.max_tunnels,
                                                     config_.base_domain, owner_uid);
}

tunnel_ptr tunnel_lifecycle::add(boost::asio::ip::tcp::acceptor listener, std::string domain,
                                 proto::tunnel_kind kind,
                                 std::vector<usage_counter::lease> leases) {
  auto t = std::make_shared<tunnel>(io_, std::move(listener));
  do t->id = shared::util::random_u64();
  while (t->id == 0 || tunnels_.count(t->id));
  shared::util::fill_random(t->secret);
  if (route_by_tag_) {
    // Data connections find the tunnel by its route tag; draw again in the (2^-64) case that
    // its index is taken.
    for (t->route_tag = shared::tls::derive_route_tag(t->secret);
         by_route_.count(route_index(t->route_tag));
         t->route_tag = shared::tls::derive_route_tag(t->secret))
      shared::util::fill_random(t->secret);
    by_route_[route_index(t->route_tag)] = t;
  }
  t->domain = std::move(domain);
  t->port = t->listener.local_endpoint().port();
  t->kind = kind;
  t->slot = free_slots_.back();
  free_slots_.pop_back();
  t->created_unix_ms = unix_ms_now();
  t->leases = std::move(leases);
  tunnels_[t->id] = t;  // registered now, so nothing can take its slot, name or port
  publish(*t);
  return t;
}

tunnel_ptr tunnel_lifecycle::find_by_id(std::uint64_t id) const {
  auto it = tunnels_.find(id);
  return it == tunnels_.end() ? nullptr : it->second;
}

tunnel_ptr tunnel_lifecycle::find_by_route_tag(const proto::route_tag_bytes& tag) const {
  auto it = by_route_.find(route_index(tag));
  if (it == by_route_.end() || !shared::util::equal_constant_time(it->second->route_tag, tag))
    return nullptr;
  return it->second;
}

bool tunnel_lifecycle::proves(std::uint64_t id, const proto::secret_bytes& secret) const {
  auto t = find_by_id(id);
  return t && t->state != ipc::slot_state::stopping &&
         shared::util::equal_constant_time(t->secret, secret);
}

void tunnel_lifecycle::attach_control(const tunnel_ptr& t, shared::net::transport stream) {
  t->grace_timer.cancel();
  boost::system::error_code ec;
  t->client_addr = shared::net::to_string(stream.socket().remote_endpoint(ec));
  auto link = std::make_shared<proto::control_link>(std::move(stream), config_.heartbeat_interval,
                                                    config_.heartbeat_timeout);
  const proto::control_link* raw = link.get();
  proto::control_link::hooks hooks;
  hooks.on_frame = [this, weak = std::weak_ptr<tunnel>(t), raw](proto::frame&& f) {
    auto live = weak.lock();
    if (!live) return;
    if (f.header.type != proto::frame_type::error) {
      spdlog::debug("{}: ignoring {} frame on the control connection", live->domain,
                    proto::to_string(f.header.type));
      return;
    }
    // The text is the client's: escaped and capped, and logged at a bounded rate, since a client
    // may reconnect and send another as fast as it likes.
    auto e = proto::decode_error_message(f.payload);
    std::uint64_t suppressed = 0;
    if (peer_error_log_.allow(std::chrono::steady_clock::now(), suppressed))
      spdlog::info("{}: client reported an error: {}{}", live->domain,
                   e ? shared::log::printable(e->message) : "(malformed)",
                   suppressed ? " (" + std::to_string(suppressed) + " earlier ones not logged)"
                              : std::string());
    // The sender of an ERROR closes next (protocol.md): nothing after it is read.
    if (live->control.get() == raw) live->control->close("client reported an error");
  };
  hooks.on_closed = [this, weak = std::weak_ptr<tunnel>(t), raw](const std::string& reason) {
    auto live = weak.lock();
    // A link replaced by a reconnect closes too; only the current one's loss means anything.
    if (!live || live->control.get() != raw) return;
    hold(live, reason);
  };
  link->set_hooks(std::move(hooks));
  auto previous = std::exchange(t->control, link);
  if (previous) previous->close("replaced by a reconnect");
  t->state = ipc::slot_state::active;
  publish(*t);
  link->start();
}

void tunnel_lifecycle::hold(const tunnel_ptr& t, const std::string& reason) {
  if (t->state == ipc::slot_state::stopping) return;
  t->control.reset();
  t->state = ipc::slot_state::held;
  publish(*t);
  spdlog::info("{}: client lost ({}); holding the domain for {} s", t->domain, reason,
               config_.grace_period.count());
  t->grace_timer.expires_after(config_.grace_period);
  t->grace_timer.async_wait([this, weak = std::weak_ptr<tunnel>(t)](boost::system::error_code ec) {
    auto live = weak.lock();
    if (ec || !live || live->state != ipc::slot_state::held) return;
    stop(live, "grace period over");
  });
}

void tunnel_lifecycle::stop(const tunnel_ptr& t, const std::string& reason) {
  if (t->state == ipc::slot_state::stopping) return;
  spdlog::info("{}: stopping ({})", t->domain, reason);
  t->state = ipc::slot_state::stopping;
  t->grace_timer.cancel();
  t->stop_timer.cancel();
  publish(*t);
  if (t->control)
    t->control->close_with_error(proto::error_code::shutting_down, "tunnel closed: " + reason);
  if (!t->worker_pid) {
    release(t);
    return;
  }
  workers_.stop(t);  // release() follows once the reaper has seen it exit
}

void tunnel_lifecycle::release(const tunnel_ptr& t) {
  // Reached only once no worker runs for this tunnel, so nobody writes its slot any more.
  t->state = ipc::slot_state::stopping;
  t->grace_timer.cancel();
  t->stop_timer.cancel();
  // A link still sending its ERROR closes itself once that is out (bounded by its own timer).
  if (t->control && !t->control->closing()) t->control->close("tunnel released");
  t->control.reset();
  t->waiting_data.clear();
  boost::system::error_code ignored;
  t->listener.close(ignored);
  ports_.give_back(t->port);
  domains_.give_back(t->domain);
  table_->clear(t->slot);
  free_slots_.push_back(t->slot);
  t->leases.clear();  // the token's and the address's share come back now
  tunnels_.erase(t->id);
  if (auto route = by_route_.find(route_index(t->route_tag));
      route != by_route_.end() && route->second == t)
    by_route_.erase(route);
  spdlog::info("{}: released (port {}, slot {})", t->domain, t->port, t->slot);
  if (shutting_down_ && tunnels_.empty())
    if (auto done = std::exchange(all_released_, nullptr)) done();
}

void tunnel_lifecycle::publish(const tunnel& t) {
  ipc::slot_identity identity;
  identity.state = t.state;
  identity.kind = table_kind(t.kind);
  identity.worker_pid = t.worker_pid;
  identity.created_unix_ms = t.created_unix_ms;
  identity.public_port = t.port;
  identity.data_connections = t.data_connections;
  identity.worker_restarts = t.restarts;
  std::strncpy(identity.domain, t.domain.c_str(), sizeof(identity.domain) - 1);
  std::strncpy(identity.client_addr, t.client_addr.c_str(), sizeof(identity.client_addr) - 1);
  table_->write_identity(t.slot, identity);
}

void tunnel_lifecycle::stop_all(std::function<void()> done) {
  shutting_down_ = true;
  all_released_ = std::move(done);
  for (auto& [id, t] : std::map(tunnels_)) stop(t, "the server is shutting down");
  if (tunnels_.empty())
    if (auto finished = std::exchange(all_released_, nullptr)) finished();
}

}  // namespace culvert::supervisor
