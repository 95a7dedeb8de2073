// The supervisor's wiring (supervisor.hpp): start-up as root, the privilege drop, signals and
// the shutdown. Each duty lives in a file of its own (docs/architecture.md, "duty -> file").
#include "supervisor/supervisor.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <csignal>
#include <cstring>

#include "shared/net/address.hpp"
#include "shared/net/spawn.hpp"

namespace culvert::supervisor {

namespace asio = boost::asio;
using shared::net::spawn;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

namespace {
// Past the workers' kill deadline (8 s) by a margin: the second, forced stage of a shutdown.
constexpr auto shutdown_deadline = std::chrono::seconds(10);
constexpr uid_t nobody_uid = 65534;
}  // namespace

supervisor::supervisor(asio::io_context& io, config cfg)
    : io_(io),
      config_(std::move(cfg)),
      tunnels_(io, config_, workers_, !config_.tls_cert.empty()),
      workers_(io, config_, tunnels_, !config_.tls_cert.empty()),
      admission_(io, config_, tunnels_, workers_),
      listener_(io, config_, admission_),
      stop_signals_(io, SIGTERM, SIGINT),
      hangup_signal_(io, SIGHUP),
      shutdown_deadline_(io) {}

void supervisor::start() {
  // Looked up first: a missing account stops us before anything is bound or created.
  if (running_as_root()) {
    worker_account_ = find_account(config_.user);
    if (!worker_account_)
      throw std::runtime_error("user '" + config_.user +
                               "' (--user, the account workers run as) does not exist; create it "
                               "or name another unprivileged account");
    if (worker_account_->uid == 0)
      throw std::runtime_error("user '" + config_.user +
                               "' (--user) has uid 0; workers read internet traffic and must run "
                               "unprivileged");
  }
  tunnels_.create_table(worker_account_ ? std::optional<uid_t>(worker_account_->uid)
                                        : std::nullopt);
  // Workers (and we, after the drop) map it read-write and we unlink it at exit as that account.
  if (worker_account_) tunnels_.table().grant_to(worker_account_->uid, worker_account_->gid);
  listener_.listen();
  workers_.start_spawner(worker_account_);
  if (worker_account_ && (worker_account_->uid == nobody_uid || worker_account_->name == "nobody"))
    spdlog::warn(
        "--user {}: the supervisor shares its uid with every other daemon running as nobody, "
        "which may signal it; create a dedicated account (useradd --system culvert) and use "
        "--user culvert",
        worker_account_->name);
  if (worker_account_)
    drop_root();
  else
    spdlog::info("not started as root (uid {}): --user is not used; workers get no_new_privs",
                 ::getuid());
  spdlog::info("control listening on {}", shared::net::to_string(listener_.local_endpoint()));
  spdlog::info("tunnels: *.{} on {} ports {}-{}, at most {}; shared table {}", config_.base_domain,
               config_.public_bind, config_.port_min, config_.port_max, config_.max_tunnels,
               tunnels_.table().name());
  const std::uint32_t ports = std::uint32_t(config_.port_max) - config_.port_min + 1;
  if (ports < config_.max_tunnels)
    spdlog::warn("the port range {}-{} holds {} ports: at most {} tunnels, not max_tunnels {}",
                 config_.port_min, config_.port_max, ports, ports, config_.max_tunnels);
  if (admission_.tokens().open())
    spdlog::warn("no tokens configured: any client may open tunnels");
  else
    spdlog::info("{} token(s) accepted", admission_.tokens().size());

  workers_.start_reaping();
  listener_.start();
  stop_signals_.async_wait([this](boost::system::error_code ec, int signal) {
    if (ec) return;
    spdlog::info("signal {}: shutting down", signal);
    spawn(io_, shutdown(), "shutdown");
  });
  wait_for_hangup();
}

// Everything that needed root is done (TLS key read, control port bound, table created, spawner
// forked). Only public ports below 1024, bound per tunnel later, still need a privilege.
void supervisor::drop_root() {
  const bool low_ports = config_.port_min < 1024;
  drop_privileges(*worker_account_,
                  low_ports ? net_bind_service_capability() : keep_no_capabilities);
  spdlog::info("dropped root: now user {} (uid {}, gid {}), no_new_privs, not dumpable, {}",
               worker_account_->name, worker_account_->uid, worker_account_->gid,
               low_ports ? "keeping only CAP_NET_BIND_SERVICE (public ports below 1024)"
                         : "no capabilities");
  spdlog::info(
      "kept from root: the control listener, open files, and the tunnel table {} (now owned by "
      "{})",
      tunnels_.table().name(), worker_account_->name);
  // Every tunnel would fail at exec otherwise; say it once, now, with the cause.
  const auto& path = workers_.worker_path();
  if (::access(path.c_str(), X_OK) != 0)
    throw std::runtime_error("worker executable " + path + " is not executable by user " +
                             worker_account_->name + ": access: " + std::strerror(errno) +
                             " (the file and every directory on its path need o+x)");
}

// SIGHUP would end the process without cleaning up; nothing is reloaded yet, so say so.
void supervisor::wait_for_hangup() {
  hangup_signal_.async_wait([this](boost::system::error_code ec, int) {
    if (ec) return;
    spdlog::warn(
        "SIGHUP: nothing is reloaded while running; restart the supervisor to apply "
        "configuration or tokens-file changes");
    wait_for_hangup();
  });
}

// Two stages, as Beast's servers do: first everything is asked to end (no new connections,
// handshakes and delayed refusals closed, tunnels stopped, workers sent SIGTERM and, past their
// deadline, SIGKILL) and the event loop runs out of work by itself; only if that takes longer
// than shutdown_deadline is the loop stopped.
asio::awaitable<void> supervisor::shutdown() {
  if (stopping_) co_return;
  stopping_ = true;
  listener_.close();
  admission_.stop_waiting();
  boost::system::error_code ignored;
  hangup_signal_.cancel(ignored);
  stop_signals_.cancel(ignored);
  bool released = false;
  tunnels_.stop_all([this, &released] {
    released = true;
    workers_.close();
    shutdown_deadline_.cancel();
  });
  if (released) co_return;
  shutdown_deadline_.expires_after(shutdown_deadline);
  co_await shutdown_deadline_.async_wait(use_tuple);
  if (released) co_return;
  spdlog::warn("{} tunnel(s) did not finish stopping; exiting anyway", tunnels_.size());
  io_.stop();
}

}  // namespace culvert::supervisor
