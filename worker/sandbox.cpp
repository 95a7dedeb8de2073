// See sandbox.hpp. The filter is classic BPF written out here, as OpenSSH's
// sandbox-seccomp-filter.c does, not built with libseccomp: its code stayed resident in every
// worker and took the idle worker past 1 MiB PSS (tools/bench --only memory). The list comes
// from strace of the e2e tests (clear and TLS workers: accept, relay, splice, timers, the
// channel, exit) and is narrow where an argument can be checked: no executable memory, ioctl
// only for FIONBIO and FIONREAD, tgkill only to itself (abort), no mremap of the table page.
#include "worker/sandbox.hpp"

#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace culvert::worker {

int make_undumpable() noexcept {
  return ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0 ? 0 : errno;
}

#if CULVERT_SANITIZED || !(defined(__x86_64__) || defined(__aarch64__))
bool enter_sandbox(const void*) {
  return false;
}
#else
namespace {

#if defined(__x86_64__)
constexpr std::uint32_t this_arch = AUDIT_ARCH_X86_64;
#else
constexpr std::uint32_t this_arch = AUDIT_ARCH_AARCH64;
#endif

// System calls allowed whatever their arguments (those an architecture lacks are left out).
constexpr int plain_calls[] = {
// event loop, timers, the channel and visitor/data sockets
#ifdef __NR_epoll_wait
    __NR_epoll_wait,
#endif
#ifdef __NR_poll
    __NR_poll,
#endif
    __NR_epoll_pwait, __NR_epoll_pwait2, __NR_epoll_ctl, __NR_timerfd_settime, __NR_timerfd_gettime,
    __NR_read, __NR_write, __NR_readv, __NR_writev, __NR_recvfrom, __NR_recvmsg, __NR_sendto,
    __NR_sendmsg, __NR_accept4, __NR_accept, __NR_shutdown, __NR_close, __NR_setsockopt,
    __NR_getsockopt, __NR_getpeername, __NR_getsockname, __NR_fcntl, __NR_splice, __NR_pipe2,
    __NR_ppoll,
    // memory (mmap, mprotect and mremap are checked below)
    __NR_brk, __NR_munmap, __NR_madvise,
    // time, identity of itself, randomness (OpenSSL), futexes (libstdc++'s once and atomics)
    __NR_clock_gettime, __NR_clock_getres, __NR_gettimeofday, __NR_clock_nanosleep, __NR_nanosleep,
    __NR_sched_yield, __NR_getpid, __NR_gettid, __NR_getrandom, __NR_futex, __NR_sysinfo,
    __NR_fstat, __NR_lseek,
    // signals (SIGTERM through Asio's signal_set) and leaving
    __NR_rt_sigaction, __NR_rt_sigprocmask, __NR_rt_sigreturn, __NR_restart_syscall, __NR_exit,
    __NR_exit_group};

// Where the low and high 32 bits of argument `i` sit in seccomp_data (little-endian).
constexpr std::uint32_t arg_low(int i) {
  return offsetof(seccomp_data, args) + std::uint32_t(i) * 8;
}
constexpr std::uint32_t arg_high(int i) {
  return arg_low(i) + 4;
}

class filter_program {
 public:
  void load(std::uint32_t offset) { code_.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offset)); }
  void ret(std::uint32_t action) { code_.push_back(BPF_STMT(BPF_RET | BPF_K, action)); }
  // if A == value skip `if_equal` instructions, else skip `if_not`
  void jump_eq(std::uint32_t value, std::uint8_t if_equal, std::uint8_t if_not) {
    code_.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, value, if_equal, if_not));
  }
  void jump_set(std::uint32_t bits, std::uint8_t if_set, std::uint8_t if_clear) {
    code_.push_back(BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, bits, if_set, if_clear));
  }
  // A check block for one system call: entered when the number matches, it must end in a ret
  // on every path; otherwise it is skipped. Reloads the number for the next comparison.
  template <typename Block>
  void call_with(int nr, Block block) {
    const std::size_t at = code_.size();
    code_.push_back({});  // the jump over the block, filled in below
    block(*this);
    code_[at] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, std::uint32_t(nr), 0,
                         std::uint8_t(code_.size() - at - 1));
    load(offsetof(seccomp_data, nr));
  }
  void allow(int nr) {
    jump_eq(std::uint32_t(nr), 0, 1);
    ret(SECCOMP_RET_ALLOW);
  }
  sock_fprog program() { return {std::uint16_t(code_.size()), code_.data()}; }

 private:
  std::vector<sock_filter> code_;
};

}  // namespace

bool enter_sandbox(const void* fixed_page) {
  const auto page = reinterpret_cast<std::uintptr_t>(fixed_page);
  filter_program f;
  // A system call of another ABI (x32, int 0x80) has other numbers: never let one through.
  f.load(offsetof(seccomp_data, arch));
  f.jump_eq(this_arch, 1, 0);
  f.ret(SECCOMP_RET_KILL_PROCESS);
  f.load(offsetof(seccomp_data, nr));
  for (const int nr : plain_calls) f.allow(nr);
  // Memory that can never become executable: no code can be brought in.
  for (const int nr : {__NR_mmap, __NR_mprotect})
    f.call_with(nr, [](filter_program& b) {
      b.load(arg_low(2));
      b.jump_set(PROT_EXEC, 0, 1);
      b.ret(SECCOMP_RET_KILL_PROCESS);
      b.ret(SECCOMP_RET_ALLOW);
    });
  // realloc moves large blocks with mremap; the table page must stay one page (growing it
  // would map the next slots' pages).
  f.call_with(__NR_mremap, [page](filter_program& b) {
    b.load(arg_low(0));
    b.jump_eq(std::uint32_t(page), 0, 3);
    b.load(arg_high(0));
    b.jump_eq(std::uint32_t(std::uint64_t(page) >> 32), 0, 1);
    b.ret(SECCOMP_RET_KILL_PROCESS);
    b.ret(SECCOMP_RET_ALLOW);
  });
  // The kernel takes an ioctl's request as 32 bits.
  f.call_with(__NR_ioctl, [](filter_program& b) {
    b.load(arg_low(1));
    b.jump_eq(FIONBIO, 2, 0);
    b.jump_eq(FIONREAD, 1, 0);
    b.ret(SECCOMP_RET_KILL_PROCESS);
    b.ret(SECCOMP_RET_ALLOW);
  });
  // glibc's fstat is newfstatat(fd, "", AT_EMPTY_PATH): a descriptor, never a path.
  f.call_with(__NR_newfstatat, [](filter_program& b) {
    b.load(arg_low(3));
    b.jump_eq(AT_EMPTY_PATH, 0, 1);
    b.ret(SECCOMP_RET_ALLOW);
    b.ret(SECCOMP_RET_KILL_PROCESS);
  });
  // abort() signals itself; nothing else may be signalled.
  f.call_with(__NR_tgkill, [](filter_program& b) {
    b.load(arg_low(0));
    b.jump_eq(std::uint32_t(::getpid()), 0, 1);
    b.ret(SECCOMP_RET_ALLOW);
    b.ret(SECCOMP_RET_KILL_PROCESS);
  });
  f.ret(SECCOMP_RET_KILL_PROCESS);

  sock_fprog program = f.program();
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    throw std::runtime_error(std::string("prctl(PR_SET_NO_NEW_PRIVS): ") + std::strerror(errno));
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) != 0)
    throw std::runtime_error(std::string("seccomp(SECCOMP_SET_MODE_FILTER): ") +
                             std::strerror(errno));
  return true;
}
#endif

}  // namespace culvert::worker
