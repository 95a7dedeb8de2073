// Privilege separation: looking up the unprivileged account, dropping the supervisor to it after
// start-up, and dropping a freshly forked worker to it before exec. Runs in the supervisor (and,
// for drop_in_child, in its child between fork and exec).
// Invariant: a drop either ends with real, effective and saved ids all equal to the account's, no
// capability beyond the one asked for, no_new_privs set and a proven failure to regain root, or it
// does not return normally (throws, returns an errno, or aborts when root came back).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

namespace culvert::supervisor {

struct account {
  uid_t uid = 0;
  gid_t gid = 0;
  std::string name;
};

// The passwd entry for `name` (getpwnam_r), or nullopt if there is none. Throws std::system_error
// when the lookup itself fails (NSS error), so "no such user" and "could not look" stay distinct.
std::optional<account> find_account(const std::string& name);

bool running_as_root();

// Why uids and gids first .. first + count - 1 cannot be workers' own ids, or nullopt: one of them
// names an account or group, is `self`'s, or lies in an /etc/subuid or /etc/subgid range (user
// namespaces of containers may map it). Reads the whole passwd and group databases once.
std::optional<std::string> worker_uid_conflict(std::uint32_t first, std::uint32_t count,
                                               const account& self);

// Capability masks for drop_privileges (all in the first 32-bit word of the capability sets).
inline constexpr std::uint32_t keep_no_capabilities = 0;
std::uint32_t net_bind_service_capability();  // the supervisor: public ports below 1024
std::uint32_t worker_spawner_capabilities();  // CAP_SETUID, CAP_SETGID, CAP_KILL

// Drops the calling process (which must be single-threaded: capabilities and keepcaps are
// per-thread) from root to `who`: supplementary groups become {who.gid}, then gid, then uid.
// The capabilities in `keep` stay permitted and effective (and nothing else). Sets
// PR_SET_NO_NEW_PRIVS and makes the process non-dumpable, then proves the drop: if
// setresuid(0,0,0), setuid(0) or setegid(0) succeeds, aborts with a message. Throws
// std::system_error naming the failed call otherwise.
void drop_privileges(const account& who, std::uint32_t keep);

// For the child between clone and exec: async-signal-safe, no allocation, no logging. Sets groups
// {gid}, gid and uid (skipped when all ids already are the target), clears every capability the
// parent kept (the worker spawner keeps CAP_SETUID, CAP_SETGID and CAP_KILL), sets
// PR_SET_NO_NEW_PRIVS, then checks that root cannot be regained. Returns 0, or the errno of the
// failed call (EPERM if root came back).
int drop_in_child(uid_t uid, gid_t gid) noexcept;

// PR_SET_NO_NEW_PRIVS and no capabilities, the ids unchanged (for workers of a supervisor that
// never had root). Async-signal-safe; returns 0 or errno.
int forbid_new_privileges() noexcept;

}  // namespace culvert::supervisor
