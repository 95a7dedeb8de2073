// The worker's sandbox. Non-dumpable from the first line of main, so no other process of its uid
// can ptrace it or read its memory, environment or descriptors through /proc; and, once set up,
// a seccomp allow-list of the system calls a running worker makes. Anything else (exec, open,
// socket, connect, ptrace, kill, ...) kills the process with SIGSYS, which the supervisor logs.
// Runs in culvert-worker and culvert-worker-clear.
#pragma once

namespace culvert::worker {

// PR_SET_DUMPABLE 0 (exec made the worker dumpable again). Returns 0 or errno.
int make_undumpable() noexcept;

// Installs the allow-list for the rest of the process's life. Call after every file the worker
// needs is open (the table mapped, the time zone read, OpenSSL's configuration loaded). Returns
// false without installing anything in sanitizer builds (their runtimes trace the process at
// exit to look for leaks). Throws std::runtime_error naming the system call that failed.
// `fixed_page` is the worker's table page: mremap of it is refused, since growing that mapping
// would map the next slots' pages of the segment.
bool enter_sandbox(const void* fixed_page = nullptr);

}  // namespace culvert::worker
