// The worker spawner (see worker_spawner.hpp): the supervisor's side of the request socket, and
// the spawner process's loop. Requests are one SOCK_SEQPACKET message each:
//   'S' u32 slot, then argv[1..] as NUL-terminated strings; descriptors in SCM_RIGHTS
//   'K' u32 slot, i32 signal
// and every answer is i32 pid, i32 errno. The spawner checks every field; a bad request gets
// EINVAL and changes nothing.
#include "supervisor/worker_spawner.hpp"

#include <fcntl.h>
#include <linux/close_range.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

extern char** environ;

namespace culvert::supervisor {

namespace {

constexpr std::size_t max_request = 32 * 1024;
constexpr std::size_t max_descriptors = 4;
constexpr std::size_t max_arguments = 64;
constexpr char request_spawn = 'S';
constexpr char request_signal = 'K';

struct answer {
  std::int32_t pid = 0;
  std::int32_t error = 0;
};

[[noreturn]] void fail(const char* call) {
  throw std::system_error(errno, std::generic_category(), call);
}

void put_u32(std::string& out, std::uint32_t value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof(value));
}

std::uint32_t get_u32(const char* data) {
  std::uint32_t value;
  std::memcpy(&value, data, sizeof(value));
  return value;
}

// Async-signal-safe (runs between clone and exec). close_range(CLOSE_RANGE_CLOEXEC) needs Linux
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

// ---- The spawner process ---------------------------------------------------------------------

struct request {
  char kind = 0;
  std::uint32_t slot = 0;
  std::vector<char*> argv;  // points into `text`, ends with nullptr
  std::int32_t signal_number = 0;
  int descriptors[max_descriptors];
  std::size_t descriptor_count = 0;
};

// The child between clone and exec: raw system calls only (the clone skipped glibc's fork
// handlers, so its cached thread state is the spawner's). Never returns.
[[noreturn]] void become_worker(const spawner_settings& settings, const request& r,
                                int error_pipe) noexcept {
  int failed = 0;
  int high[max_descriptors];
  // Lift every descriptor above the targets first, so that a source numbered 3 or 4 cannot be
  // overwritten by another dup2; the lifted copies close at exec.
  const int report = ::fcntl(error_pipe, F_DUPFD_CLOEXEC, 16);
  if (report < 0) ::_exit(127);
  for (std::size_t i = 0; i < r.descriptor_count && !failed; ++i)
    if ((high[i] = ::fcntl(r.descriptors[i], F_DUPFD_CLOEXEC, 16)) < 0) failed = errno;
  for (std::size_t i = 0; i < r.descriptor_count && !failed; ++i)
    if (::dup2(high[i], int(3 + i)) < 0) failed = errno;  // dup2 clears FD_CLOEXEC on the target
  // Everything else closes at exec (the spawner's socket, other requests' leftovers).
  if (!failed) failed = mark_close_on_exec_from(unsigned(3 + r.descriptor_count));
  if (!failed) {
    if (settings.worker_uid_base)
      failed =
          drop_in_child(*settings.worker_uid_base + r.slot, *settings.worker_uid_base + r.slot);
    else if (settings.drop_to)
      failed = drop_in_child(settings.drop_to->uid, settings.drop_to->gid);
    else
      failed = forbid_new_privileges();
  }
  if (!failed) {
    ::execve(settings.executable.c_str(), r.argv.data(), environ);
    failed = errno;
  }
  [[maybe_unused]] auto written = ::write(report, &failed, sizeof(failed));
  ::_exit(127);
}

answer spawn_worker(const spawner_settings& settings, std::vector<int>& pidfds, const request& r) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return {0, errno};
  int pidfd = -1;
  // CLONE_PARENT: the worker is the supervisor's child, reaped by its one SIGCHLD handler.
  const long pid =
      ::syscall(SYS_clone, CLONE_PARENT | CLONE_PIDFD | SIGCHLD, nullptr, &pidfd, nullptr, nullptr);
  if (pid == 0) become_worker(settings, r, pipe_fds[1]);
  ::close(pipe_fds[1]);
  if (pid < 0) {
    const int error = errno;
    ::close(pipe_fds[0]);
    return {0, error};
  }
  // The pipe closes at a successful exec (EOF); otherwise the child wrote the errno.
  int child_error = 0;
  ssize_t n;
  while ((n = ::read(pipe_fds[0], &child_error, sizeof(child_error))) < 0 && errno == EINTR) {
  }
  ::close(pipe_fds[0]);
  if (pidfds[r.slot] >= 0) ::close(pidfds[r.slot]);
  pidfds[r.slot] = pidfd;
  if (n == sizeof(child_error) && child_error != 0) return {std::int32_t(pid), child_error};
  return {std::int32_t(pid), 0};
}

answer signal_worker(const std::vector<int>& pidfds, const request& r) {
  if (r.signal_number != SIGTERM && r.signal_number != SIGKILL) return {0, EINVAL};
  if (pidfds[r.slot] < 0) return {0, ESRCH};
  if (::syscall(SYS_pidfd_send_signal, pidfds[r.slot], r.signal_number, nullptr, 0) != 0)
    return {0, errno};
  return {};
}

// Reads one request; false when the supervisor has gone (EOF or a broken socket).
bool read_request(int socket, std::vector<char>& text, request& r, answer& refusal) {
  text.assign(max_request + 1, '\0');
  iovec iov{text.data(), max_request};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_descriptors)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  while ((n = ::recvmsg(socket, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {
  }
  if (n <= 0) return false;
  r = request{};
  bool bad = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
      bad = true;
      continue;
    }
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (r.descriptor_count < max_descriptors)
        r.descriptors[r.descriptor_count++] = fd;
      else
        ::close(fd), bad = true;
    }
  }
  refusal = {0, EINVAL};
  if (bad || n < 5) return true;
  r.kind = text[0];
  r.slot = get_u32(&text[1]);
  if (r.kind == request_signal && n == 9) {
    std::memcpy(&r.signal_number, &text[5], sizeof(r.signal_number));
    refusal = {};
    return true;
  }
  if (r.kind != request_spawn || text[std::size_t(n) - 1] != '\0' || r.descriptor_count == 0)
    return true;
  r.argv.push_back(nullptr);  // argv[0], set by the caller to the fixed executable
  for (std::size_t at = 5; at < std::size_t(n) && r.argv.size() <= max_arguments;) {
    r.argv.push_back(&text[at]);
    at += std::strlen(&text[at]) + 1;
  }
  if (r.argv.size() > max_arguments) return true;
  r.argv.push_back(nullptr);
  refusal = {};
  return true;
}

[[noreturn]] void serve(int socket, const spawner_settings& settings) {
  std::vector<int> pidfds(settings.slot_count, -1);
  std::vector<char> text;
  std::string executable = settings.executable;
  for (;;) {
    request r;
    answer result;
    if (!read_request(socket, text, r, result)) ::_exit(0);
    if (result.error == 0 && r.slot >= settings.slot_count) result = {0, EINVAL};
    if (result.error == 0) {
      if (r.kind == request_spawn) {
        r.argv[0] = executable.data();
        result = spawn_worker(settings, pidfds, r);
      } else {
        result = signal_worker(pidfds, r);
      }
    }
    for (std::size_t i = 0; i < r.descriptor_count; ++i) ::close(r.descriptors[i]);
    if (::send(socket, &result, sizeof(result), MSG_NOSIGNAL) != sizeof(result)) ::_exit(0);
  }
}

// In the forked spawner, before serving: only its socket and stdio stay open, signals that the
// supervisor's handlers caught are back to their defaults (those handlers wrote to descriptors
// just closed), it dies with the supervisor, and it drops root keeping what spawning needs.
[[noreturn]] void run_spawner(int socket, const spawner_settings& settings) noexcept {
  try {
    if (::dup2(socket, 3) < 0) fail("dup2");
    ::syscall(SYS_close_range, 4U, ~0U, 0U);
    for (const int s : {SIGINT, SIGHUP, SIGPIPE}) std::signal(s, SIG_IGN);
    for (const int s : {SIGTERM, SIGCHLD, SIGUSR1, SIGUSR2}) std::signal(s, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail("prctl(PR_SET_PDEATHSIG)");
    if (::getppid() == 1) ::_exit(0);  // the supervisor died before the line above
    if (settings.drop_to) {
      drop_privileges(*settings.drop_to, settings.worker_uid_base ? worker_spawner_capabilities()
                                                                  : keep_no_capabilities);
    } else if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
      fail("prctl(PR_SET_DUMPABLE)");
    }
    ::prctl(PR_SET_NAME, "culvert-spawner");
    serve(3, settings);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "culvert-supervisor: worker spawner: %s\n", e.what());
    ::_exit(1);
  }
}

}  // namespace

std::unique_ptr<worker_spawner> worker_spawner::start(const spawner_settings& settings) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) fail("socketpair");
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int error = errno;
    ::close(pair[0]);
    ::close(pair[1]);
    errno = error;
    fail("fork (worker spawner)");
  }
  if (pid == 0) run_spawner(pair[1], settings);
  ::close(pair[1]);
  // An answer never takes long (a clone and the first steps of an exec); a spawner that stops
  // answering must not freeze the supervisor.
  const timeval limit{10, 0};
  ::setsockopt(pair[0], SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
  return std::unique_ptr<worker_spawner>(new worker_spawner(pair[0], pid));
}

worker_spawner::~worker_spawner() {
  if (socket_ >= 0) ::close(socket_);  // the spawner reads EOF and exits
}

namespace {

answer exchange(int socket, const std::string& message, std::span<const int> descriptors) {
  iovec iov{const_cast<char*>(message.data()), message.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_descriptors)] = {};
  if (!descriptors.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * descriptors.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * descriptors.size());
    std::memcpy(CMSG_DATA(c), descriptors.data(), sizeof(int) * descriptors.size());
  }
  ssize_t n;
  while ((n = ::sendmsg(socket, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR) {
  }
  if (n != ssize_t(message.size())) return {0, n < 0 ? errno : EMSGSIZE};
  answer reply;
  while ((n = ::recv(socket, &reply, sizeof(reply), 0)) < 0 && errno == EINTR) {
  }
  if (n < 0) return {0, errno == EAGAIN ? ETIMEDOUT : errno};
  if (n != sizeof(reply)) return {0, EPIPE};  // the spawner has gone
  return reply;
}

}  // namespace

pid_t worker_spawner::spawn(std::uint32_t slot, const std::vector<std::string>& arguments,
                            std::span<const int> descriptors, int& error) {
  if (descriptors.empty() || descriptors.size() > max_descriptors ||
      arguments.size() >= max_arguments) {
    error = EINVAL;
    return 0;
  }
  std::string message(1, request_spawn);
  put_u32(message, slot);
  for (const auto& argument : arguments) message.append(argument.c_str(), argument.size() + 1);
  const answer reply = exchange(socket_, message, descriptors);
  error = reply.error;
  return reply.error ? 0 : reply.pid;
}

int worker_spawner::signal(std::uint32_t slot, int signal_number) {
  std::string message(1, request_signal);
  put_u32(message, slot);
  message.append(reinterpret_cast<const char*>(&signal_number), sizeof(signal_number));
  return exchange(socket_, message, {}).error;
}

std::string default_worker_path(bool tls) {
  const char* name = tls ? "culvert-worker" : "culvert-worker-clear";
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return name;
  return (self.parent_path() / name).string();
}

}  // namespace culvert::supervisor
