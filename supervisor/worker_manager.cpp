// The worker manager (worker_manager.hpp): launch, channel, hand-over, reaping, back-off and
// stopping of tunnel workers. Supervisor, one io_context thread.
#include "supervisor/worker_manager.hpp"

#include <openssl/crypto.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <csignal>
#include <cstring>

#include "shared/ipc/worker_channel.hpp"
#include "shared/net/address.hpp"
#include "shared/net/spawn.hpp"
#include "shared/protocol/frame_io.hpp"
#include "shared/tls/tls_contexts.hpp"
#include "supervisor/tunnel_lifecycle.hpp"

namespace culvert::supervisor {

namespace asio = boost::asio;
namespace proto = shared::protocol;
namespace ipc = shared::ipc;
namespace wire = shared::ipc::worker_channel;
using asio::ip::tcp;
using shared::net::spawn;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

namespace {

constexpr std::size_t max_waiting_data = 32;  // data connections queued for a starting worker
constexpr auto worker_kill_deadline = std::chrono::seconds(8);  // > the worker's 5 s drain
constexpr auto quick_exit = std::chrono::seconds(2);            // a worker that dies this fast...
constexpr unsigned max_quick_failures = 6;                      // ...this often in a row is broken
constexpr auto back_off_unit = std::chrono::milliseconds(100);  // times 2^(quick failures)
constexpr auto longest_back_off = std::chrono::milliseconds(5000);
constexpr int max_logged_channel_warnings = 10;  // per worker: a bad one must not flood the log

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* name = ::sigabbrev_np(WTERMSIG(status));
    return std::string("killed by SIG") + (name ? name : std::to_string(WTERMSIG(status)).c_str());
  }
  return "ended with status " + std::to_string(status);
}

}  // namespace

worker_manager::worker_manager(asio::io_context& io, const config& cfg, tunnel_lifecycle& tunnels,
                               bool tls)
    : io_(io),
      config_(cfg),
      tunnels_(tunnels),
      tls_(tls),
      worker_path_(cfg.worker_path.empty() ? default_worker_path(tls) : cfg.worker_path),
      child_signals_(io, SIGCHLD) {}

worker_manager::~worker_manager() {
  // Workers notice the channel's EOF (and PR_SET_PDEATHSIG) and exit on their own.
  if (spawner_)
    for (auto& [pid, t] : by_pid_) spawner_->signal(t->slot, SIGTERM);
}

// Forked while still root: the only process that may start workers under their own uids.
void worker_manager::start_spawner(const std::optional<account>& worker_account) {
  spawner_settings settings{worker_path_, worker_account, std::nullopt, config_.max_tunnels};
  if (worker_account && config_.worker_uid_base) {
    if (auto conflict =
            worker_uid_conflict(config_.worker_uid_base, config_.max_tunnels, *worker_account))
      throw std::runtime_error("worker uids " + std::to_string(config_.worker_uid_base) + "-" +
                               std::to_string(config_.worker_uid_base + config_.max_tunnels - 1) +
                               " (--worker-uid-base, one per tunnel) are not free: " + *conflict +
                               "; choose another base");
    settings.worker_uid_base = config_.worker_uid_base;
  }
  spawner_ = worker_spawner::start(settings);
  if (settings.worker_uid_base)
    spdlog::info(
        "workers start as uid and gid {} + slot, one account per tunnel, with no_new_privs and "
        "no capabilities (spawner {} keeps CAP_SETUID, CAP_SETGID and CAP_KILL)",
        *settings.worker_uid_base, spawner_->pid());
  else if (worker_account)
    spdlog::warn(
        "--worker-uid-base 0: every worker runs as {}, so a compromised worker can signal the "
        "other tenants' workers",
        worker_account->name);
}

void worker_manager::start_reaping() {
  spawn(io_, reap_loop(), "child reaper");
}

void worker_manager::close() {
  closed_ =
      true;  // the reaper may be running (this is called from on_exit): it must not wait again
  boost::system::error_code ignored;
  child_signals_.cancel(ignored);
}

void worker_manager::start(const tunnel_ptr& t) {
  auto channel = std::make_shared<ipc::channel_socket>(io_);
  ipc::channel_socket worker_end(io_);
  ipc::make_channel_pair(*channel, worker_end);

  auto& table = tunnels_.table();
  // fd 3: the channel, fd 4: the public listener, fd 5: the table (worker_options' defaults).
  const std::vector<std::string> arguments = {
      "--segment",
      table.name(),
      "--slot",
      std::to_string(t->slot),
      "--domain",
      t->domain,
      "--log-level",
      config_.log_level,
      "--keepalive-ms",
      std::to_string(config_.heartbeat_interval.count() * 1000),
      "--idle-timeout-ms",
      std::to_string(config_.heartbeat_timeout.count() * 1000),
      "--max-visitors",
      std::to_string(config_.max_visitors),
      "--max-visitors-per-source",
      std::to_string(config_.max_visitors_per_source),
      "--stream-idle-timeout-ms",
      std::to_string(config_.stream_idle_timeout.count() * 1000),
      "--buffer-budget-mb",
      std::to_string(config_.buffer_budget_mb),
  };
  int error = 0;
  // The worker runs under a uid of its own, which may not open the table: it gets a descriptor,
  // maps its own counters page from it and closes it.
  const int table_fd = table.duplicate_fd();
  const int descriptors[] = {worker_end.native_handle(), t->listener.native_handle(), table_fd};
  const pid_t pid = spawner_->spawn(t->slot, arguments, descriptors, error);
  ::close(table_fd);
  worker_end.close();
  if (!pid) {
    spdlog::error("{}: starting worker {} failed: {}", t->domain, worker_path_,
                  std::strerror(error));
    if (t->control)
      t->control->close_with_error(proto::error_code::internal,
                                   "the server could not start this tunnel's worker");
    tunnels_.stop(t, "worker could not start");
    return;
  }
  t->worker_pid = pid;
  t->channel = channel;
  if (tls_) {
    // The worker alone terminates the tunnel's TLS data connections: give it their key (first,
    // so it is there before any connection), never the secret itself.
    wire::data_key key{.tunnel_id = t->id, .key = {}};
    const auto psk = shared::tls::derive_data_psk(t->secret);
    static_assert(sizeof(key.key) == sizeof(psk));
    std::memcpy(key.key.data(), psk.data(), psk.size());
    spawn(io_, tell(channel, wire::encode(key)), "worker key");
    OPENSSL_cleanse(key.key.data(), key.key.size());
  }
  t->worker_ready = false;
  t->worker_did_work = false;
  t->worker_started = std::chrono::steady_clock::now();
  by_pid_[pid] = t;
  tunnels_.publish(*t);
  spdlog::info("{}: worker {} started", t->domain, pid);
  spawn(io_, channel_loop(t, channel), "worker channel");
}

asio::awaitable<void> worker_manager::deliver_data(tunnel_ptr t, tcp::socket socket, bool tls) {
  if (t->worker_ready && t->channel) {
    co_await hand_over(t, std::move(socket), tls);
    co_return;
  }
  if (t->waiting_data.size() >= max_waiting_data) {
    shared::net::transport clear(std::move(socket));
    co_await proto::refuse(clear, proto::error_code::overloaded,
                           "too many data connections waiting for the tunnel's worker");
    co_return;
  }
  t->waiting_data.push_back({std::move(socket), tls});  // handed over when the worker is ready
}

asio::awaitable<void> worker_manager::hand_over(tunnel_ptr t, tcp::socket socket, bool tls) {
  auto channel = t->channel;
  boost::system::error_code ec;
  const auto peer = shared::net::to_string(socket.remote_endpoint(ec));
  if (ec) co_return;
  const auto message = wire::encode(wire::data_connection{tls, peer});
  if (auto err = co_await ipc::send_message(*channel, message, socket.native_handle())) {
    // The worker is going away; the client sees its data connection close and dials again.
    spdlog::warn("{}: handing a data connection to the worker failed: {}", t->domain,
                 err.message());
  }
  // Our copy closes here; the worker's copy of the connection lives on.
}

asio::awaitable<void> worker_manager::channel_loop(tunnel_ptr t,
                                                   std::shared_ptr<ipc::channel_socket> channel) {
  // A worker serves the internet: if one goes bad, its noise must not flood the log.
  int warnings_left = max_logged_channel_warnings;
  auto warn = [&](const char* what) {
    if (warnings_left-- > 0)
      spdlog::warn("{}: {} from worker {} ignored{}", t->domain, what, t->worker_pid,
                   warnings_left == 0 ? " (further ones are not logged)" : "");
  };
  for (;;) {
    auto received = co_await ipc::receive_message(*channel);
    if (auto* ec = std::get_if<boost::system::error_code>(&received)) {
      // A malformed message (oversized, bad control data) was consumed whole: skip it and keep
      // listening, or this worker's later reports would go unread. Anything else is the
      // channel's end, and the reaper handles the worker's exit.
      if (*ec != asio::error::invalid_argument) co_return;
      warn("malformed message");
      continue;
    }
    auto& message = std::get<ipc::channel_message>(received);
    const bool has_fd = message.fd >= 0;
    if (has_fd) ::close(message.fd);  // workers never send descriptors
    if (t->channel != channel) continue;
    auto decoded = wire::decode_to_supervisor(message.payload, has_fd);
    if (!decoded) {
      warn(wire::is_to_supervisor_kind(message.payload) ? "malformed report" : "unknown message");
      continue;
    }
    if (std::holds_alternative<wire::ready>(*decoded)) {
      t->worker_ready = true;
      if (t->reopen_pending && t->control)
        t->control->send(proto::encode_empty(proto::frame_type::reopen));
      t->reopen_pending = false;
      while (!t->waiting_data.empty()) {
        auto waiting = std::move(t->waiting_data.front());
        t->waiting_data.pop_front();
        co_await hand_over(t, std::move(waiting.socket), waiting.tls);
      }
    } else {
      t->data_connections = std::get<wire::data_connection_count>(*decoded).count;
      // It adopted a data connection: from now on its exit is no sign of a broken worker (an
      // outsider's load could cause it, and must not get the tunnel closed).
      t->worker_did_work = true;
      tunnels_.publish(*t);
    }
  }
}

asio::awaitable<void> worker_manager::tell(std::shared_ptr<ipc::channel_socket> channel,
                                           std::string message) {
  if (auto ec = co_await ipc::send_message(*channel, message))
    spdlog::warn("message to a worker failed: {}", ec.message());
  OPENSSL_cleanse(message.data(), message.size());
}

asio::awaitable<void> worker_manager::reap_loop() {
  while (!closed_) {
    auto [ec, signal] = co_await child_signals_.async_wait(use_tuple);
    if (ec) co_return;
    (void)signal;
    // One SIGCHLD may stand for several exits: collect them all.
    for (;;) {
      int status = 0;
      const pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      on_exit(pid, status);
    }
  }
}

void worker_manager::on_exit(pid_t pid, int status) {
  auto it = by_pid_.find(pid);
  if (it == by_pid_.end()) {
    if (spawner_ && pid == spawner_->pid())
      spdlog::error("worker spawner {} {}: no new worker can start", pid, describe_exit(status));
    return;
  }
  auto t = it->second;
  by_pid_.erase(it);
  t->worker_pid = 0;
  t->worker_ready = false;
  t->data_connections = 0;  // they died with it
  if (t->channel) t->channel->close();
  t->channel.reset();
  const auto lived = std::chrono::steady_clock::now() - t->worker_started;

  if (t->state == shared::ipc::slot_state::stopping || tunnels_.shutting_down()) {
    spdlog::info("{}: worker {} {}", t->domain, pid, describe_exit(status));
    tunnels_.release(t);
    return;
  }
  spdlog::warn("{}: worker {} {} unexpectedly", t->domain, pid, describe_exit(status));
  // Postfix's rule: back off, and in the end give up, only for a worker that dies before doing
  // any work. One that adopted a data connection may have been killed by visitor load, and
  // that load may hit every restart: counting those would let outsiders close the tunnel.
  t->quick_failures = lived < quick_exit && !t->worker_did_work ? t->quick_failures + 1 : 0;
  const bool fatal = WIFEXITED(status) && WEXITSTATUS(status) == wire::exit_fatal;
  if (fatal || t->quick_failures > max_quick_failures) {
    spdlog::error("{}: worker keeps failing; closing the tunnel", t->domain);
    if (t->control)
      t->control->close_with_error(proto::error_code::internal,
                                   "this tunnel's worker failed on the server");
    tunnels_.stop(t, "worker failed");
    return;
  }
  restart(t);
}

void worker_manager::restart(const tunnel_ptr& t) {
  ++t->restarts;
  t->reopen_pending = true;
  // Back off when a worker dies right after starting (postfix master's rule).
  const auto delay =
      t->quick_failures == 0
          ? std::chrono::milliseconds(0)
          : std::min(back_off_unit * (1u << std::min(t->quick_failures, 10u)), longest_back_off);
  t->stop_timer.expires_after(delay);
  t->stop_timer.async_wait([this, weak = std::weak_ptr<tunnel>(t)](boost::system::error_code ec) {
    auto live = weak.lock();
    if (ec || !live || live->state == shared::ipc::slot_state::stopping || live->worker_pid) return;
    spdlog::info("{}: restarting worker (restart {})", live->domain, live->restarts);
    start(live);
  });
}

void worker_manager::stop(const tunnel_ptr& t) {
  signal(*t, SIGTERM);
  t->stop_timer.expires_after(worker_kill_deadline);
  t->stop_timer.async_wait([this, weak = std::weak_ptr<tunnel>(t)](boost::system::error_code ec) {
    auto live = weak.lock();
    if (ec || !live || !live->worker_pid) return;
    spdlog::warn("{}: worker {} ignored SIGTERM; killing it", live->domain, live->worker_pid);
    signal(*live, SIGKILL);
  });
}

// Workers may run under uids of their own: only the spawner may signal them.
void worker_manager::signal(const tunnel& t, int signal_number) {
  if (const int error = spawner_->signal(t.slot, signal_number); error && error != ESRCH)
    spdlog::warn("{}: signal {} to worker {} failed: {}", t.domain, signal_number, t.worker_pid,
                 std::strerror(error));
}

}  // namespace culvert::supervisor
