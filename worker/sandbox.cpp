// See sandbox.hpp. The list comes from strace of the e2e tests (clear and TLS workers: accept,
// relay, splice, timers, the channel, exit) and is kept narrow where an argument can be checked:
// no executable memory, ioctl only for FIONBIO and FIONREAD, tgkill only to itself (abort).
#include "worker/sandbox.hpp"

#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

#if !CULVERT_SANITIZED
#include <fcntl.h>
#include <seccomp.h>
#endif

namespace culvert::worker {

int make_undumpable() noexcept {
  return ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0 ? 0 : errno;
}

#if CULVERT_SANITIZED
bool enter_sandbox(const void*) {
  return false;
}
#else
namespace {

// System calls allowed whatever their arguments.
constexpr int plain_calls[] = {
    // event loop, timers, the channel and visitor/data sockets
    SCMP_SYS(epoll_wait), SCMP_SYS(epoll_pwait), SCMP_SYS(epoll_pwait2), SCMP_SYS(epoll_ctl),
    SCMP_SYS(timerfd_settime), SCMP_SYS(timerfd_gettime), SCMP_SYS(read), SCMP_SYS(write),
    SCMP_SYS(readv), SCMP_SYS(writev), SCMP_SYS(recvfrom), SCMP_SYS(recvmsg), SCMP_SYS(sendto),
    SCMP_SYS(sendmsg), SCMP_SYS(accept4), SCMP_SYS(accept), SCMP_SYS(shutdown), SCMP_SYS(close),
    SCMP_SYS(setsockopt), SCMP_SYS(getsockopt), SCMP_SYS(getpeername), SCMP_SYS(getsockname),
    SCMP_SYS(fcntl), SCMP_SYS(splice), SCMP_SYS(pipe2), SCMP_SYS(poll), SCMP_SYS(ppoll),
    // memory (mmap and mprotect are below: never executable)
    SCMP_SYS(brk), SCMP_SYS(munmap), SCMP_SYS(madvise),
    // time, identity of itself, randomness (OpenSSL), futexes (libstdc++'s once and atomics)
    SCMP_SYS(clock_gettime), SCMP_SYS(clock_getres), SCMP_SYS(gettimeofday),
    SCMP_SYS(clock_nanosleep), SCMP_SYS(nanosleep), SCMP_SYS(sched_yield), SCMP_SYS(getpid),
    SCMP_SYS(gettid), SCMP_SYS(getrandom), SCMP_SYS(futex), SCMP_SYS(sysinfo), SCMP_SYS(fstat),
    SCMP_SYS(lseek),
    // signals (SIGTERM through Asio's signal_set) and leaving
    SCMP_SYS(rt_sigaction), SCMP_SYS(rt_sigprocmask), SCMP_SYS(rt_sigreturn),
    SCMP_SYS(restart_syscall), SCMP_SYS(exit), SCMP_SYS(exit_group)};

void check(int result, const char* call) {
  if (result < 0) throw std::runtime_error(std::string(call) + ": " + std::strerror(-result));
}

}  // namespace

bool enter_sandbox(const void* fixed_page) {
  scmp_filter_ctx filter = ::seccomp_init(SCMP_ACT_KILL_PROCESS);
  if (!filter) throw std::runtime_error("seccomp_init failed");
  try {
    for (const int call : plain_calls)
      check(::seccomp_rule_add(filter, SCMP_ACT_ALLOW, call, 0), "seccomp_rule_add");
    // Memory that can never become executable: no code can be brought in.
    check(::seccomp_rule_add(filter, SCMP_ACT_ALLOW, SCMP_SYS(mmap), 1,
                             SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)),
          "seccomp_rule_add(mmap)");
    check(::seccomp_rule_add(filter, SCMP_ACT_ALLOW, SCMP_SYS(mprotect), 1,
                             SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)),
          "seccomp_rule_add(mprotect)");
    for (const unsigned long request : {FIONBIO, FIONREAD})
      check(::seccomp_rule_add(filter, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
                               SCMP_A1(SCMP_CMP_EQ, request)),
            "seccomp_rule_add(ioctl)");
    // realloc moves large blocks with mremap; the table page must stay one page.
    check(::seccomp_rule_add(filter, SCMP_ACT_ALLOW, SCMP_SYS(mremap), 1,
                             SCMP_A0(SCMP_CMP_NE, scmp_datum_t(fixed_page))),
          "seccomp_rule_add(mremap)");
    // glibc's fstat is newfstatat(fd, "", AT_EMPTY_PATH): a descriptor, never a path.
    check(::seccomp_rule_add(filter, SCMP_ACT_ALLOW, SCMP_SYS(newfstatat), 1,
                             SCMP_A3(SCMP_CMP_EQ, AT_EMPTY_PATH)),
          "seccomp_rule_add(newfstatat)");
    // abort() signals itself; nothing else may be signalled.
    check(::seccomp_rule_add(filter, SCMP_ACT_ALLOW, SCMP_SYS(tgkill), 1,
                             SCMP_A0(SCMP_CMP_EQ, scmp_datum_t(::getpid()))),
          "seccomp_rule_add(tgkill)");
    check(::seccomp_load(filter), "seccomp_load");
  } catch (...) {
    ::seccomp_release(filter);
    throw;
  }
  ::seccomp_release(filter);
  return true;
}
#endif

}  // namespace culvert::worker
