// Worker launch through Boost.Process v2 with an fd-inheritance initializer of our own.
#include "supervisor/worker_launcher.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <boost/process/v2/process.hpp>
#include <filesystem>

#include "supervisor/privileges.hpp"

namespace culvert::supervisor {

namespace bp = boost::process::v2;

namespace {

// Plays the role of bp::posix::bind_fd, whose on_setup in Boost 1.81 falls off the end of a
// non-void function (undefined behaviour). Sources are first moved above the targets so that a
// source numbered 3 or 4 cannot be overwritten by the other dup2.
struct inherit_descriptors {
  int channel_fd;
  int listener_fd;
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;

  bp::error_code on_setup(bp::posix::default_launcher& launcher, const bp::filesystem::path&,
                          const char* const*) {
    launcher.fd_whitelist.push_back(3);
    launcher.fd_whitelist.push_back(4);
    return {};
  }

  bp::error_code on_exec_setup(bp::posix::default_launcher&, const bp::filesystem::path&,
                               const char* const*) {
    // Runs in the child between fork and exec: async-signal-safe calls only.
    const int channel_high = ::fcntl(channel_fd, F_DUPFD, 10);
    const int listener_high = ::fcntl(listener_fd, F_DUPFD, 10);
    if (channel_high < 0 || listener_high < 0 || ::dup2(channel_high, 3) < 0 ||
        ::dup2(listener_high, 4) < 0)
      return bp::error_code(errno, bp::system_category());
    // After the dup2s (which need no privilege) and before exec: the worker reads visitor bytes
    // from its first instruction on, so it must never run a single one as root.
    if (uid && gid) {
      if (const int failed = drop_in_child(*uid, *gid))
        return bp::error_code(failed, bp::system_category());
    } else if (const int failed = forbid_new_privileges()) {
      return bp::error_code(failed, bp::system_category());
    }
    return {};  // the launcher closes everything else, temporaries included
  }
};

}  // namespace

pid_t launch_worker(boost::asio::io_context& io, const worker_spawn& spawn,
                    boost::system::error_code& error) {
  bp::posix::default_launcher launcher;
  bp::process child =
      launcher(io.get_executor(), error, spawn.executable, spawn.arguments,
               inherit_descriptors{spawn.channel_fd, spawn.listener_fd, spawn.uid, spawn.gid});
  if (error) return 0;
  const pid_t pid = child.id();
  child.detach();  // the supervisor's SIGCHLD handler reaps it
  return pid;
}

std::string default_worker_path(bool tls) {
  const char* name = tls ? "culvert-worker" : "culvert-worker-clear";
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return name;
  return (self.parent_path() / name).string();
}

}  // namespace culvert::supervisor
