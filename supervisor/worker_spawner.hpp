// The worker spawner: a small process forked from the supervisor while it is still root, which
// alone may start workers under their own uids and signal them. The network-facing supervisor
// asks it over a socket pair; it answers nothing else. Each worker is cloned with CLONE_PARENT,
// so it is the supervisor's child and the supervisor's one SIGCHLD reaper sees it exit.
// Invariant: a worker inherits exactly the descriptors of its request (as fds 3, 4, ...), runs
// under the uid and gid of its slot (or the spawner's own account when no range is set) with no
// capability and no_new_privs, and execs the one executable fixed when the spawner started.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "supervisor/privileges.hpp"

namespace culvert::supervisor {

struct spawner_settings {
  std::string executable;  // the worker program, fixed for the spawner's life
  // Started as root: the spawner drops to this account, keeping only CAP_SETUID, CAP_SETGID and
  // CAP_KILL (or none when workers share the account). Unset: it keeps the caller's ids.
  std::optional<account> drop_to;
  // Workers run as uid = gid = worker_uid_base + slot; unset: as `drop_to` (or the caller).
  std::optional<std::uint32_t> worker_uid_base;
  std::uint32_t slot_count = 0;
};

class worker_spawner {
 public:
  // Forks the spawner process. Call while single-threaded and before dropping root. Throws
  // std::system_error naming the failed call.
  static std::unique_ptr<worker_spawner> start(const spawner_settings&);
  ~worker_spawner();
  worker_spawner(const worker_spawner&) = delete;
  worker_spawner& operator=(const worker_spawner&) = delete;

  // Starts the worker for `slot` with `arguments` (argv[1..]); descriptors[i] becomes fd 3 + i in
  // it. Returns its pid, or 0 with `error` set to the errno of what failed (the exec included).
  // Blocks for the clone and exec's first steps, about a millisecond.
  pid_t spawn(std::uint32_t slot, const std::vector<std::string>& arguments,
              std::span<const int> descriptors, int& error);
  // Sends SIGTERM or SIGKILL to the worker last started for `slot` (through its pidfd, so a
  // reused pid is never hit). Returns 0 or an errno (ESRCH: it has exited).
  int signal(std::uint32_t slot, int signal_number);
  pid_t pid() const { return pid_; }

 private:
  worker_spawner(int socket, pid_t pid) : socket_(socket), pid_(pid) {}
  int socket_ = -1;
  pid_t pid_ = 0;
};

// The worker beside the running executable: culvert-worker when the supervisor runs TLS, else
// culvert-worker-clear, the same program built without TLS (OpenSSL is never mapped into it).
std::string default_worker_path(bool tls);

}  // namespace culvert::supervisor
