// Starting a worker process (Boost.Process v2, fork + exec of culvert-worker[-clear]) with exactly
// two inherited descriptors: its channel to the supervisor as fd 3 and the public listener as fd 4,
// as the unprivileged worker account and with no_new_privs.
// Runs in the supervisor, which is single-threaded when it forks. Reaping is not done here: the
// supervisor's one SIGCHLD handler does it.
#pragma once

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <boost/system/error_code.hpp>
#include <optional>
#include <string>
#include <vector>

namespace culvert::supervisor {

struct worker_spawn {
  std::string executable;
  std::vector<std::string> arguments;
  int channel_fd = -1;   // becomes fd 3 in the worker
  int listener_fd = -1;  // becomes fd 4 in the worker
  // When set, the child switches to this uid/gid (groups = {gid}) before exec. Either way the
  // worker runs with PR_SET_NO_NEW_PRIVS: nothing it execs can gain privileges.
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
};

// Returns the child's pid, or 0 with `error` set.
pid_t launch_worker(boost::asio::io_context&, const worker_spawn&,
                    boost::system::error_code& error);

// The worker beside the running executable: culvert-worker when the supervisor runs TLS, else
// culvert-worker-clear, the same program built without TLS (OpenSSL is never mapped into it).
std::string default_worker_path(bool tls);

}  // namespace culvert::supervisor
