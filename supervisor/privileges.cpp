// Privilege separation (see privileges.hpp), in the manner of OpenSSH's uidswap.c: groups before
// gid before uid, then try to get root back and die if that works. Runs in the supervisor;
// drop_in_child runs in its forked child before exec of culvert-worker.
// Invariant: capabilities are set with raw capset (no libcap), and the child path makes raw system
// calls only, so it is async-signal-safe and applies to the (single-threaded) child as a whole.
#include "supervisor/privileges.hpp"

#include <dirent.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <system_error>
#include <vector>

namespace culvert::supervisor {

namespace {

// 32-bit ABIs keep the 16-bit-id calls under the plain names; the full-width ones end in 32.
#ifdef SYS_setresuid32
constexpr long sys_setresuid = SYS_setresuid32, sys_setresgid = SYS_setresgid32,
               sys_setgroups = SYS_setgroups32, sys_setuid = SYS_setuid32;
#else
constexpr long sys_setresuid = SYS_setresuid, sys_setresgid = SYS_setresgid,
               sys_setgroups = SYS_setgroups, sys_setuid = SYS_setuid;
#endif

[[noreturn]] void fail(const char* call, const std::string& context) {
  throw std::system_error(errno, std::generic_category(), std::string(call) + " (" + context + ")");
}

// A broken invariant: the process still holds (or got back) what it was meant to give up. Going
// on would run internet-facing code with privileges nobody expects it to have.
[[noreturn]] void privileges_still_held(const std::string& what) {
  spdlog::critical("privilege drop did not hold: {}; aborting", what);
  std::fprintf(stderr, "culvert-supervisor: privilege drop did not hold: %s\n", what.c_str());
  std::abort();
}

// Threads other than the caller would keep root: glibc moves every thread's uid, but keepcaps,
// capabilities and no_new_privs are per-thread, set here for the caller only.
void require_single_thread() {
  DIR* tasks = ::opendir("/proc/self/task");
  if (!tasks) fail("opendir /proc/self/task", "counting threads before dropping privileges");
  int threads = 0;
  while (const dirent* entry = ::readdir(tasks))
    if (entry->d_name[0] != '.') ++threads;
  ::closedir(tasks);
  if (threads != 1) {
    errno = EBUSY;
    fail("drop_privileges", std::to_string(threads) + " threads; must be called single-threaded");
  }
}

struct capability_sets {
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
};

capability_sets get_capabilities() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  capability_sets sets;
  if (::syscall(SYS_capget, &header, sets.data) != 0)
    fail("capget", "reading our capabilities after the drop");
  return sets;
}

// Permitted = effective = `mask` (bits of the first word only), inheritable = none, so nothing
// reaches an exec'd program through the inheritable set either.
void set_capabilities(std::uint32_t mask) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  capability_sets sets;
  sets.data[0].permitted = sets.data[0].effective = mask;
  if (::syscall(SYS_capset, &header, sets.data) != 0)
    fail("capset", "keeping only the capabilities asked for");
}

void prove_dropped(const account& who, std::uint32_t capability_mask) {
  // Each of these must fail now; a success means we are root again. The worker spawner keeps
  // CAP_SETUID and CAP_SETGID by design (it switches each worker to its own uid): for it the
  // proof is that the capability sets hold exactly those, checked below.
  if (!(capability_mask & CAP_TO_MASK(CAP_SETUID))) {
    if (::setresuid(0, 0, 0) == 0) privileges_still_held("setresuid(0, 0, 0) succeeded");
    if (::setuid(0) == 0) privileges_still_held("setuid(0) succeeded");
  }
  if (!(capability_mask & CAP_TO_MASK(CAP_SETGID))) {
    if (who.gid != 0 && ::setegid(0) == 0) privileges_still_held("setegid(0) succeeded");
    if (who.gid != 0 && ::setgid(0) == 0) privileges_still_held("setgid(0) succeeded");
  }

  uid_t ruid, euid, suid;
  gid_t rgid, egid, sgid;
  if (::getresuid(&ruid, &euid, &suid) != 0 || ::getresgid(&rgid, &egid, &sgid) != 0)
    fail("getresuid/getresgid", "checking the drop");
  if (ruid != who.uid || euid != who.uid || suid != who.uid)
    privileges_still_held("uids are " + std::to_string(ruid) + "/" + std::to_string(euid) + "/" +
                          std::to_string(suid) + ", expected " + std::to_string(who.uid));
  if (rgid != who.gid || egid != who.gid || sgid != who.gid)
    privileges_still_held("gids are " + std::to_string(rgid) + "/" + std::to_string(egid) + "/" +
                          std::to_string(sgid) + ", expected " + std::to_string(who.gid));

  gid_t groups[2];
  const int group_count = ::getgroups(2, groups);
  if (group_count < 0 && errno != EINVAL) fail("getgroups", "checking the drop");
  if (group_count < 0 || group_count > 1 || (group_count == 1 && groups[0] != who.gid))
    privileges_still_held("supplementary groups other than " + std::to_string(who.gid) + " remain");

  const capability_sets caps = get_capabilities();
  for (unsigned i = 0; i < _LINUX_CAPABILITY_U32S_3; ++i) {
    const std::uint32_t expected = i == 0 ? capability_mask : 0;
    if (caps.data[i].effective != expected || caps.data[i].permitted != expected ||
        caps.data[i].inheritable != 0)
      privileges_still_held("capabilities beyond the ones kept remain (word " + std::to_string(i) +
                            ")");
  }
  if (::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) privileges_still_held("no_new_privs is unset");
}

}  // namespace

std::optional<account> find_account(const std::string& name) {
  long size_hint = ::sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buffer(size_hint > 0 ? static_cast<std::size_t>(size_hint) : 1024);
  for (;;) {
    passwd entry{};
    passwd* found = nullptr;
    const int error = ::getpwnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found);
    if (error == ERANGE && buffer.size() < (1u << 20)) {
      buffer.resize(buffer.size() * 2);
      continue;
    }
    // getpwnam_r(3) lists these as what some NSS modules return for "no such name".
    if (error == 0 || error == ENOENT || error == ESRCH || error == EBADF || error == EPERM) {
      if (!found) return std::nullopt;
      return account{found->pw_uid, found->pw_gid, name};
    }
    throw std::system_error(error, std::generic_category(),
                            "getpwnam_r (looking up user '" + name + "')");
  }
}

namespace {

bool in_range(std::uint64_t id, std::uint32_t first, std::uint32_t count) {
  return id >= first && id < std::uint64_t(first) + count;
}

// The first "name:start:count" line of a subordinate-id file that overlaps the range.
std::optional<std::string> subordinate_overlap(const char* path, std::uint32_t first,
                                               std::uint32_t count) {
  std::FILE* file = std::fopen(path, "re");
  if (!file) return std::nullopt;  // no such file: no ranges handed out
  char line[512];
  std::optional<std::string> found;
  while (!found && std::fgets(line, sizeof(line), file)) {
    char name[256];
    unsigned long long start = 0, length = 0;
    if (std::sscanf(line, "%255[^:]:%llu:%llu", name, &start, &length) == 3 && length > 0 &&
        start < std::uint64_t(first) + count && start + length > first)
      found = std::string(path) + " gives " + name + " " + std::to_string(start) + "-" +
              std::to_string(start + length - 1);
  }
  std::fclose(file);
  return found;
}

}  // namespace

std::optional<std::string> worker_uid_conflict(std::uint32_t first, std::uint32_t count,
                                               const account& self) {
  if (in_range(self.uid, first, count) || in_range(self.gid, first, count))
    return "they include the supervisor's own account " + self.name;
  std::optional<std::string> found;
  ::setpwent();
  while (const passwd* entry = ::getpwent())
    if (!found && in_range(entry->pw_uid, first, count))
      found =
          "account " + std::string(entry->pw_name) + " has uid " + std::to_string(entry->pw_uid);
  ::endpwent();
  ::setgrent();
  while (const group* entry = ::getgrent())
    if (!found && in_range(entry->gr_gid, first, count))
      found = "group " + std::string(entry->gr_name) + " has gid " + std::to_string(entry->gr_gid);
  ::endgrent();
  if (!found) found = subordinate_overlap("/etc/subuid", first, count);
  if (!found) found = subordinate_overlap("/etc/subgid", first, count);
  return found;
}

bool running_as_root() {
  return ::geteuid() == 0;
}

std::uint32_t net_bind_service_capability() {
  return CAP_TO_MASK(CAP_NET_BIND_SERVICE);
}

std::uint32_t worker_spawner_capabilities() {
  return CAP_TO_MASK(CAP_SETUID) | CAP_TO_MASK(CAP_SETGID) | CAP_TO_MASK(CAP_KILL);
}

void drop_privileges(const account& who, std::uint32_t keep) {
  if (who.uid == 0) {
    errno = EINVAL;
    fail("drop_privileges", "user '" + who.name + "' has uid 0; it must be unprivileged");
  }
  require_single_thread();
  const std::string target = "user '" + who.name + "' (uid " + std::to_string(who.uid) + ", gid " +
                             std::to_string(who.gid) + ")";

  // Groups first, while we still may: afterwards setgroups needs CAP_SETGID we no longer have.
  if (::setgroups(1, &who.gid) != 0) fail("setgroups", "switching to " + target);
  if (::setresgid(who.gid, who.gid, who.gid) != 0) fail("setresgid", "switching to " + target);
  // Keepcaps only spans the uid change; capset below trims the permitted set to the one we want.
  if (keep && ::prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0)
    fail("prctl(PR_SET_KEEPCAPS)", "keeping capabilities across the uid change");
  if (::setresuid(who.uid, who.uid, who.uid) != 0) fail("setresuid", "switching to " + target);
  set_capabilities(keep);
  if (keep && ::prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0)
    fail("prctl(PR_SET_KEEPCAPS, 0)", "after the uid change");
  // Ambient capabilities would survive exec into the workers; the kernel drops them with the
  // permitted set, clear them anyway (EINVAL: a kernel before 4.3 has none).
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
    fail("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", "after the uid change");
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    fail("prctl(PR_SET_NO_NEW_PRIVS)", "after switching to " + target);
  // Workers run as the same uid: non-dumpable keeps them from ptrace-attaching to us or reading
  // our memory through /proc (the kernel usually sets this on the uid change; make it certain).
  if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
    fail("prctl(PR_SET_DUMPABLE, 0)", "after switching to " + target);
  prove_dropped(who, keep);
}

int drop_in_child(uid_t uid, gid_t gid) noexcept {
  uid_t ruid, euid, suid;
  gid_t rgid, egid, sgid;
  if (::getresuid(&ruid, &euid, &suid) != 0 || ::getresgid(&rgid, &egid, &sgid) != 0) return errno;
  const bool already =
      ruid == uid && euid == uid && suid == uid && rgid == gid && egid == gid && sgid == gid;
  if (!already) {
    if (::syscall(sys_setgroups, 1, &gid) != 0) return errno;
    if (::syscall(sys_setresgid, gid, gid, gid) != 0) return errno;
    if (::syscall(sys_setresuid, uid, uid, uid) != 0) return errno;
  }
  if (const int failed = forbid_new_privileges()) return failed;
  // The proof: with uid != 0 and no CAP_SETUID, both calls must fail.
  if (uid != 0 && (::syscall(sys_setresuid, 0, 0, 0) == 0 || ::syscall(sys_setuid, 0) == 0))
    return EPERM;
  if (::getresuid(&ruid, &euid, &suid) != 0) return errno;
  if (ruid != uid || euid != uid || suid != uid) return EPERM;
  return 0;
}

int forbid_new_privileges() noexcept {
  // The spawner's CAP_SETUID, CAP_SETGID and CAP_KILL must not reach the worker: a uid change
  // between non-zero ids keeps capabilities, and exec only drops them because no_new_privs and
  // an empty inheritable set leave nothing to gain. Clear them here rather than rely on that.
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capset, &header, none) != 0) return errno;
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
    return errno;
  return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 ? 0 : errno;
}

}  // namespace culvert::supervisor
