// Worker launch through Boost.Process v2 with an fd-inheritance initializer of our own.
#include "supervisor/worker_launcher.hpp"

#include <fcntl.h>
#include <linux/close_range.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <boost/process/v2/process.hpp>
#include <filesystem>

#include "supervisor/privileges.hpp"

namespace culvert::supervisor {

namespace bp = boost::process::v2;

namespace {

// Async-signal-safe (runs between fork and exec). close_range(CLOSE_RANGE_CLOEXEC) needs Linux
// 5.11; older kernels get the flag set one descriptor at a time up to the descriptor limit.
int mark_close_on_exec_from(unsigned first) noexcept {
  if (::syscall(SYS_close_range, first, ~0U, CLOSE_RANGE_CLOEXEC) == 0) return 0;
  if (errno != ENOSYS && errno != EINVAL) return errno;
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return errno;
  const rlim_t end = limit.rlim_cur == RLIM_INFINITY ? 1u << 20 : limit.rlim_cur;
  for (rlim_t fd = first; fd < end; ++fd) {
    const int flags = ::fcntl(int(fd), F_GETFD);
    if (flags >= 0 && !(flags & FD_CLOEXEC) && ::fcntl(int(fd), F_SETFD, flags | FD_CLOEXEC) != 0)
      return errno;
  }
  return 0;
}

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
    // Everything above fd 4 closes at exec. Boost 1.81's close_all (close_handles.ipp) compares
    // whitelist[idx] with itself and so never closes what lies between the whitelisted
    // descriptors; our sockets are close-on-exec from birth, but a worker must not depend on
    // every descriptor of the supervisor having been opened that way. CLOEXEC rather than closing
    // now keeps the launcher's error pipe (above 4) working until exec.
    if (const int failed = mark_close_on_exec_from(5))
      return bp::error_code(failed, bp::system_category());
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
