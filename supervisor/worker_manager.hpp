// The worker manager: starts each tunnel's worker (through the spawner), talks to it over its
// channel (shared/ipc/worker_channel.hpp), hands it data connections, reaps it, restarts it with
// back-off, and stops it (SIGTERM, then SIGKILL past a deadline). Runs in the supervisor.
// Invariant: exactly one mechanism reaps children (SIGCHLD + waitpid(-1, WNOHANG)), and a
// worker's exit is reported to the tunnel life cycle once.
#pragma once

#include <sys/types.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "shared/ipc/fd_channel.hpp"
#include "supervisor/config.hpp"
#include "supervisor/privileges.hpp"
#include "supervisor/tunnel.hpp"
#include "supervisor/worker_spawner.hpp"

namespace culvert::supervisor {

class tunnel_lifecycle;

class worker_manager {
 public:
  // `tls`: the supervisor runs TLS, so each worker gets its tunnel's data-connection key.
  worker_manager(boost::asio::io_context&, const config&, tunnel_lifecycle&, bool tls);
  ~worker_manager();  // SIGTERM to any worker still running (a forced shutdown)

  // Forks the spawner; call while root and single-threaded. `account`: the one workers run as
  // (or base their uids on), when started as root.
  void start_spawner(const std::optional<account>& account);
  const std::string& worker_path() const { return worker_path_; }
  void start_reaping();
  // Shutdown, once every worker has been reaped: stops waiting for SIGCHLD.
  void close();

  void start(const tunnel_ptr&);
  // SIGTERM now, SIGKILL past the kill deadline; the life cycle hears of the exit from the reaper.
  void stop(const tunnel_ptr&);
  // An authenticated data connection: to the worker now, or queued until it is ready.
  boost::asio::awaitable<void> deliver_data(tunnel_ptr, boost::asio::ip::tcp::socket, bool tls);

 private:
  boost::asio::awaitable<void> channel_loop(tunnel_ptr,
                                            std::shared_ptr<shared::ipc::channel_socket>);
  boost::asio::awaitable<void> hand_over(tunnel_ptr, boost::asio::ip::tcp::socket, bool tls);
  boost::asio::awaitable<void> tell(std::shared_ptr<shared::ipc::channel_socket>,
                                    std::string message);
  boost::asio::awaitable<void> reap_loop();
  void on_exit(pid_t, int status);
  void restart(const tunnel_ptr&);
  void signal(const tunnel&, int signal_number);

  boost::asio::io_context& io_;
  const config& config_;
  tunnel_lifecycle& tunnels_;
  const bool tls_;
  std::string worker_path_;
  std::unique_ptr<worker_spawner> spawner_;  // starts and signals workers (see worker_spawner.hpp)
  std::map<pid_t, tunnel_ptr> by_pid_;
  boost::asio::signal_set child_signals_;
  bool closed_ = false;
};

}  // namespace culvert::supervisor
