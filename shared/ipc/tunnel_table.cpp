// The shared-memory tunnel table: creation and removal by the supervisor, one counters page per
// worker, lock-free consistent copies for culvert-status.
// Invariant: the header is fully written before its magic is (release); a slot's identity is only
// ever written between an odd and the next even value of its sequence counter; and every bound a
// process uses comes from its own checked copy of the header, never from the shared page again.
// Over 500 lines on purpose: owner, counter writer and reader share the layout and its checks,
// which must change together (a reader checking less than the owner wrote is a bug).
#include "shared/ipc/tunnel_table.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <new>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>

namespace culvert::shared::ipc {

namespace {

static_assert(std::is_standard_layout_v<table_header> && std::is_standard_layout_v<identity_slot>);
static_assert(std::is_trivially_copyable_v<table_header>, "the header is copied out with memcpy");
static_assert(std::is_trivially_copyable_v<slot_identity>, "identities are copied with memcpy");
static_assert(std::is_trivially_destructible_v<identity_slot> &&
                  std::is_trivially_destructible_v<slot_counters>,
              "nothing in the segment is ever destroyed, only unmapped");
// Atomics shared between processes must not hide a lock in the process that created them.
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic_ref<std::uint64_t>::required_alignment <= alignof(table_header));

// A reader that keeps losing the race spins briefly, then sleeps so a writer that was preempted
// between its two increments gets to finish; a writer that died there never will.
constexpr int read_attempts = 1000;
constexpr int spin_attempts = 100;
constexpr auto retry_pause = std::chrono::microseconds(50);

// How long an existing segment without a magic may still be in the middle of being created by a
// supervisor starting at the same moment.
constexpr int initialization_checks = 20;
constexpr auto initialization_pause = std::chrono::milliseconds(10);

std::size_t page_size() {
  static const auto size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

std::size_t round_up(std::size_t bytes, std::size_t page) {
  return (bytes + page - 1) / page * page;
}

// Reads the magic as the owner publishes it: last, with release, after every other header field.
// The mapping may be read-only; an aligned lock-free 8-byte load never writes.
std::uint64_t load_magic(const table_header& header) {
  return std::atomic_ref<std::uint64_t>(const_cast<std::uint64_t&>(header.magic))
      .load(std::memory_order_acquire);
}

// kill(pid, 0) probes without signalling; EPERM means it exists under another user. pid <= 0
// would address process groups, so such values are never alive.
bool process_alive(std::int64_t pid) {
  if (pid <= 0 || pid > std::numeric_limits<pid_t>::max()) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

// The program a pid runs, without the " (deleted)" an upgraded binary leaves; nullopt when the
// kernel will not say (EACCES: a non-dumpable process, or no ptrace rights in a container), ""
// for a kernel thread (no program at all).
std::optional<std::string> program_of(const std::string& pid) {
  char target[4096];
  const auto length = ::readlink(("/proc/" + pid + "/exe").c_str(), target, sizeof(target) - 1);
  if (length < 0) return errno == ENOENT ? std::optional<std::string>("") : std::nullopt;
  std::string path(target, static_cast<std::size_t>(length));
  constexpr std::string_view deleted = " (deleted)";
  if (path.ends_with(deleted)) path.resize(path.size() - deleted.size());
  return path.substr(path.find_last_of('/') + 1);
}

// The process's command name (the program's first 15 bytes unless it renamed itself), which any
// account may read.
std::optional<std::string> command_of(const std::string& pid) {
  std::ifstream comm("/proc/" + pid + "/comm");
  std::string name;
  if (!std::getline(comm, name)) return std::nullopt;
  return name;
}

// Whether a live pid recorded in a table may be the supervisor that made it: a supervisor runs
// the same program as we do (by /proc/PID/exe, else by command name). A planted
// `supervisor_pid = 1` (init) is thus seen as stale. When neither can be read, assume it may be,
// rather than remove a live supervisor's table.
bool may_be_a_supervisor(std::int64_t pid) {
  const auto other = std::to_string(pid);
  const auto self_program = program_of("self"), other_program = program_of(other);
  if (self_program && other_program && !self_program->empty())
    return *self_program == *other_program;
  const auto self_command = command_of("self"), other_command = command_of(other);
  if (self_command && other_command) return *self_command == *other_command;
  return true;
}

std::int64_t now_unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Copies at most capacity - 1 bytes and zero-fills the rest, so the field always ends in a NUL.
void copy_field(char* field, std::size_t capacity, std::string_view text) {
  const auto length = std::min(text.size(), capacity - 1);
  std::memcpy(field, text.data(), length);
  std::memset(field + length, 0, capacity - length);
}

std::string errno_text(int error) {
  return std::strerror(error);
}

// "no culvert supervisor is running for instance foo (segment /culvert-foo not found)".
std::string not_running_message(const std::string& segment) {
  constexpr std::string_view prefix = "/culvert-";
  const std::string which = std::string_view(segment).starts_with(prefix)
                                ? " for instance " + segment.substr(prefix.size())
                                : std::string();
  return "no culvert supervisor is running" + which + " (segment " + segment + " not found)";
}

std::string hex(std::uint64_t value) {
  char text[19];
  std::snprintf(text, sizeof(text), "0x%016llx", static_cast<unsigned long long>(value));
  return text;
}

std::string octal_mode(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof(text), "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

// "uid 1000 (alice)", or just "uid 1000" for an account without a name.
std::string describe_uid(uid_t uid) {
  passwd entry{}, *found = nullptr;
  char buffer[1024];
  std::string text = "uid " + std::to_string(uid);
  if (::getpwuid_r(uid, &entry, buffer, sizeof(buffer), &found) == 0 && found)
    text += " (" + std::string(found->pw_name) + ")";
  return text;
}

// An open descriptor, closed on destruction.
struct unique_fd {
  int fd = -1;
  explicit unique_fd(int value) : fd(value) {}
  unique_fd(unique_fd&& other) noexcept : fd(std::exchange(other.fd, -1)) {}
  unique_fd& operator=(unique_fd&&) = delete;
  ~unique_fd() {
    if (fd >= 0) ::close(fd);
  }
};

// glibc's shm_open adds O_NOFOLLOW and O_CLOEXEC itself; spelled out so no libc can drop them.
// O_NONBLOCK: a FIFO planted under the name must not hang the open.
int open_shm(const std::string& segment, int flags, mode_t mode = 0) {
  return ::shm_open(segment.c_str(), flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, mode);
}

// Opens an existing segment, turning errno into a sentence that names the instance.
unique_fd open_existing(const std::string& segment, int flags) {
  unique_fd fd(open_shm(segment, flags));
  if (fd.fd >= 0) return fd;
  const int error = errno;
  if (error == ENOENT) throw std::runtime_error(not_running_message(segment));
  if (error == ELOOP)
    throw std::runtime_error("shared-memory segment " + segment_path(segment) +
                             " is a symbolic link; not following it (remove it: a culvert "
                             "supervisor never creates one)");
  throw std::runtime_error("shm_open " + segment + " failed: " + errno_text(error));
}

struct stat stat_fd(int fd, const std::string& segment) {
  struct stat info {};
  if (::fstat(fd, &info) != 0)
    throw std::runtime_error("fstat " + segment_path(segment) + " failed: " + errno_text(errno));
  return info;
}

// A segment only its owner can have written: a regular file, no group or other write bit.
void require_private_writes(const struct stat& info, const std::string& segment) {
  if (!S_ISREG(info.st_mode))
    throw std::runtime_error("shared-memory segment " + segment_path(segment) +
                             " is not a regular file; it is not a culvert tunnel table");
  if (info.st_mode & (S_IWGRP | S_IWOTH))
    throw std::runtime_error("shared-memory segment " + segment_path(segment) + " (owner " +
                             describe_uid(info.st_uid) + ", mode " + octal_mode(info.st_mode) +
                             ") is writable by group or others; refusing to trust its contents");
}

shared_mapping map_shared(int fd, std::size_t length, std::size_t offset, int protection,
                          const std::string& segment, const char* what) {
  void* address = ::mmap(nullptr, length, protection, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (address == MAP_FAILED)
    throw std::runtime_error(std::string("mmap ") + segment + " (" + what + ", " +
                             std::to_string(length) + " bytes at offset " + std::to_string(offset) +
                             ") failed: " + errno_text(errno));
  return shared_mapping(address, length);
}

// Copies the header of an open segment into private memory: maps its first page read-only, loads
// the magic with acquire, copies, unmaps. Requires the segment to hold at least a header.
table_header copy_header(int fd, std::size_t size, const std::string& segment) {
  if (size < sizeof(table_header))
    throw std::runtime_error("shared-memory segment " + segment +
                             " is not a culvert tunnel table (" + std::to_string(size) +
                             " bytes, smaller than a table header)");
  const auto page = map_shared(fd, sizeof(table_header), 0, PROT_READ, segment, "header");
  const auto& shared = *reinterpret_cast<const table_header*>(page.data());
  table_header copy;
  copy.magic = load_magic(shared);
  // Fields after the magic: the acquire above orders them after the owner's writes.
  std::memcpy(reinterpret_cast<char*>(&copy) + sizeof(copy.magic),
              reinterpret_cast<const char*>(&shared) + sizeof(copy.magic),
              sizeof(copy) - sizeof(copy.magic));
  return copy;
}

// Reads the header into private memory without mapping anything: for a worker, which starts after
// its supervisor finished the header (fork and exec order the supervisor's writes before ours).
table_header read_header(int fd, std::size_t size, const std::string& segment) {
  table_header copy;
  if (size < sizeof(table_header))
    throw std::runtime_error("shared-memory segment " + segment +
                             " is not a culvert tunnel table (" + std::to_string(size) +
                             " bytes, smaller than a table header)");
  const auto got = ::pread(fd, &copy, sizeof(copy), 0);
  if (got != static_cast<ssize_t>(sizeof(copy)))
    throw std::runtime_error("pread " + segment + " (the table header) failed: " +
                             (got < 0 ? errno_text(errno) : "short read"));
  return copy;
}

// Checks a private copy of a header against what this build would lay out for its slot count, and
// against the segment's real size. Returns the layout to use from then on.
table_layout validate_header(const table_header& header, std::size_t size,
                             const std::string& segment) {
  if (header.magic != table_magic)
    throw std::runtime_error("shared-memory segment " + segment +
                             " is not a culvert tunnel table (magic " + hex(header.magic) +
                             ", expected " + hex(table_magic) + ")");
  if (header.version != table_version)
    throw std::runtime_error("shared-memory segment " + segment + " has table version " +
                             std::to_string(header.version) + " but this program reads version " +
                             std::to_string(table_version) + " (mixed culvert versions?)");
  if (header.identity_slot_size != sizeof(identity_slot))
    throw std::runtime_error("shared-memory segment " + segment + " has " +
                             std::to_string(header.identity_slot_size) +
                             "-byte slots but this program uses " +
                             std::to_string(sizeof(identity_slot)) + " (mixed culvert builds?)");
  const auto layout = layout_for(header.slot_count);
  if (header.page_size != layout.page_size ||
      header.identities_offset != layout.identities_offset ||
      header.counters_offset != layout.counters_offset ||
      header.segment_size != layout.segment_size)
    throw std::runtime_error("shared-memory segment " + segment + " has a layout (page size " +
                             std::to_string(header.page_size) + ", segment size " +
                             std::to_string(header.segment_size) + ") other than this program's " +
                             "for " + std::to_string(header.slot_count) + " slots (page size " +
                             std::to_string(layout.page_size) + ", segment size " +
                             std::to_string(layout.segment_size) + ")");
  if (size < layout.segment_size)
    throw std::runtime_error("shared-memory segment " + segment +
                             " is truncated: " + std::to_string(size) + " bytes, but " +
                             std::to_string(header.slot_count) + " slots need " +
                             std::to_string(layout.segment_size));
  return layout;
}

// What an existing, trusted segment says about its owner, once its creator has had time to
// finish it.
struct existing_owner {
  bool initialized = false;  // carries the table magic
  std::int64_t pid = 0;
};

existing_owner inspect_trusted(int fd, const std::string& segment) {
  for (int check = 0;; ++check) {
    const auto size = static_cast<std::size_t>(stat_fd(fd, segment).st_size);
    if (size >= sizeof(table_header)) {
      const auto header = copy_header(fd, size, segment);
      if (header.magic == table_magic) return existing_owner{true, header.supervisor_pid};
    }
    // A supervisor starting right now creates, sizes, then fills the segment within microseconds;
    // give it that chance before calling its segment garbage.
    if (check + 1 == initialization_checks) return existing_owner{};
    std::this_thread::sleep_for(initialization_pause);
  }
}

void remove_segment(const std::string& segment, const std::string& why) {
  spdlog::warn("removing stale shared-memory segment {}: {}", segment, why);
  if (::shm_unlink(segment.c_str()) != 0 && errno != ENOENT)
    throw std::runtime_error("shm_unlink " + segment +
                             " (removing a stale table) failed: " + errno_text(errno));
}

// Removes whatever stands at the segment's name unless it is the table of a live supervisor of
// ours (then throws). Contents are read only from a segment an account of ours wrote alone.
void remove_if_stale(const std::string& segment, std::optional<uid_t> trusted_uid) {
  const auto path = segment_path(segment);
  struct stat link {};
  if (::lstat(path.c_str(), &link) != 0) {
    if (errno == ENOENT) return;
    throw std::runtime_error("lstat " + path + " failed: " + errno_text(errno));
  }
  const bool trusted_owner =
      link.st_uid == ::geteuid() || (trusted_uid && link.st_uid == *trusted_uid);
  const bool trusted =
      S_ISREG(link.st_mode) && trusted_owner && !(link.st_mode & (S_IWGRP | S_IWOTH));
  if (!trusted) {
    const std::string what = std::string(S_ISLNK(link.st_mode)   ? "a symbolic link"
                                         : S_ISREG(link.st_mode) ? "a segment"
                                                                 : "not a regular file") +
                             ", owner " + describe_uid(link.st_uid) + ", mode " +
                             octal_mode(link.st_mode);
    // Root may remove anything in sticky /dev/shm; anyone else only their own entries.
    const int error = ::shm_unlink(segment.c_str()) == 0 ? 0 : errno;
    if (error == 0 || error == ENOENT) {
      spdlog::warn("removed {} ({}): not created by this supervisor's account, not trusted", path,
                   what);
      return;
    }
    throw std::runtime_error("shared-memory segment " + path + " (" + what +
                             ") was not created by this supervisor's account and cannot be "
                             "removed (" +
                             errno_text(error) +
                             "); remove it as root or its owner, or use --instance");
  }
  const unique_fd fd(open_shm(segment, O_RDONLY));
  if (fd.fd < 0) {
    if (errno == ENOENT) return;  // gone since the lstat
    throw std::runtime_error("shm_open " + segment +
                             " (inspecting an existing table) failed: " + errno_text(errno));
  }
  // The entry may have been swapped since the lstat: only the very file checked is read.
  const auto info = stat_fd(fd.fd, segment);
  if (info.st_ino != link.st_ino || info.st_dev != link.st_dev || info.st_uid != link.st_uid ||
      info.st_mode != link.st_mode)
    throw std::runtime_error("shared-memory segment " + path +
                             " changed while being inspected; try again or use --instance");
  const auto owner = inspect_trusted(fd.fd, segment);
  if (!owner.initialized) return remove_segment(segment, "it is not an initialized culvert table");
  if (owner.pid == ::getpid()) return remove_segment(segment, "it was left behind by this process");
  if (process_alive(owner.pid) && may_be_a_supervisor(owner.pid))
    throw std::runtime_error("another supervisor (pid " + std::to_string(owner.pid) +
                             ") owns shared-memory segment " + segment + "; use --instance");
  remove_segment(segment, "its supervisor (pid " + std::to_string(owner.pid) +
                              ") is no longer running, or that pid is another program now");
}

}  // namespace

std::string_view to_string(slot_state state) {
  switch (state) {
    case slot_state::free:
      return "free";
    case slot_state::starting:
      return "starting";
    case slot_state::active:
      return "active";
    case slot_state::held:
      return "held";
    case slot_state::stopping:
      return "stopping";
  }
  return "unknown";  // the value came from shared memory, not from our enum
}

std::string_view to_string(tunnel_kind kind) {
  switch (kind) {
    case tunnel_kind::http:
      return "http";
    case tunnel_kind::tcp:
      return "tcp";
  }
  return "unknown";
}

std::string segment_name(std::string_view instance) {
  return "/culvert-" + std::string(instance.empty() ? "default" : instance);
}

std::string segment_path(std::string_view segment) {
  return "/dev/shm" + std::string(segment);
}

table_layout layout_for(std::uint32_t slot_count) {
  table_layout layout;
  layout.slot_count = slot_count;
  layout.page_size = page_size();
  static_assert(sizeof(table_header) <= 4096 && sizeof(slot_counters) <= 4096);
  layout.identities_offset = layout.page_size;
  layout.counters_offset =
      layout.identities_offset +
      round_up(std::size_t{slot_count} * sizeof(identity_slot), layout.page_size);
  layout.segment_size = layout.counters_offset + std::size_t{slot_count} * layout.page_size;
  return layout;
}

shared_mapping::shared_mapping(shared_mapping&& other) noexcept
    : address_(std::exchange(other.address_, nullptr)), length_(std::exchange(other.length_, 0)) {}

shared_mapping& shared_mapping::operator=(shared_mapping&& other) noexcept {
  if (this != &other) {
    if (address_) ::munmap(address_, length_);
    address_ = std::exchange(other.address_, nullptr);
    length_ = std::exchange(other.length_, 0);
  }
  return *this;
}

shared_mapping::~shared_mapping() {
  if (address_) ::munmap(address_, length_);
}

// ---- Supervisor side -----------------------------------------------------------------------

tunnel_table_owner::tunnel_table_owner(std::string_view instance, std::uint32_t slot_count,
                                       std::string_view base_domain,
                                       std::optional<uid_t> trusted_uid)
    : name_(segment_name(instance)), layout_(layout_for(slot_count)), creator_(::getpid()) {
  // Create exclusively: if another supervisor creates the name between our check and our create,
  // look again rather than share (or unlink) its table.
  for (int attempt = 1;; ++attempt) {
    remove_if_stale(name_, trusted_uid);
    // 0644: culvert-status, possibly run by another user, maps it read-only.
    fd_ = open_shm(name_, O_RDWR | O_CREAT | O_EXCL, 0644);
    if (fd_ >= 0) break;
    if (errno != EEXIST || attempt == 3)
      throw std::runtime_error("shm_open " + name_ +
                               " (creating the tunnel table) failed: " + errno_text(errno));
  }
  try {
    // The umask may have taken bits away; readers need o+r, and nobody else may write.
    if (::fchmod(fd_, 0644) != 0)
      throw std::runtime_error("fchmod 0644 " + name_ + " failed: " + errno_text(errno));
    // Sparse: tmpfs allocates a page on first touch, so counters pages of unused slots cost
    // nothing (an idle 1,000-slot table is its identities, about 57 pages).
    if (::ftruncate(fd_, static_cast<off_t>(layout_.segment_size)) != 0)
      throw std::runtime_error("ftruncate " + name_ + " to " +
                               std::to_string(layout_.segment_size) +
                               " bytes failed: " + errno_text(errno));
    region_ = map_shared(fd_, layout_.segment_size, 0, PROT_READ | PROT_WRITE, name_, "table");
  } catch (...) {
    ::shm_unlink(name_.c_str());
    ::close(fd_);
    throw;
  }

  auto* base = region_.data();
  auto* header = new (base) table_header{};
  auto* identities = base + layout_.identities_offset;
  for (std::uint32_t i = 0; i < slot_count; ++i)
    new (identities + i * sizeof(identity_slot)) identity_slot{};
  identities_ = std::launder(reinterpret_cast<identity_slot*>(identities));
  // Counters pages are left as ftruncate made them: all zero bytes, which is what a value-
  // initialised slot_counters holds. Constructing them would allocate every page.

  header->version = table_version;
  header->slot_count = slot_count;
  header->page_size = static_cast<std::uint32_t>(layout_.page_size);
  header->identity_slot_size = sizeof(identity_slot);
  header->identities_offset = layout_.identities_offset;
  header->counters_offset = layout_.counters_offset;
  header->segment_size = layout_.segment_size;
  header->supervisor_pid = creator_;
  header->started_unix_ms = now_unix_ms();
  copy_field(header->base_domain, sizeof(header->base_domain), base_domain);
  // Last: a reader or a competing supervisor that sees the magic sees every field above.
  std::atomic_ref<std::uint64_t>(header->magic).store(table_magic, std::memory_order_release);
}

tunnel_table_owner::~tunnel_table_owner() {
  // A forked child inherits this object; only the process that created the table may unlink it.
  if (creator_ == ::getpid() && ::shm_unlink(name_.c_str()) != 0 && errno != ENOENT)
    spdlog::warn("shm_unlink {} (removing the tunnel table) failed: {}", name_,
                 std::strerror(errno));
  if (fd_ >= 0) ::close(fd_);
}

void tunnel_table_owner::grant_to(uid_t uid, gid_t gid) {
  if (::fchown(fd_, uid, gid) != 0)
    throw std::system_error(errno, std::generic_category(),
                            "fchown " + name_ + " to " + std::to_string(uid) + ":" +
                                std::to_string(gid) + " (handing the tunnel table to the workers)");
  // Owner read-write (workers' counters), everyone else read-only (culvert-status); never more.
  if (::fchmod(fd_, 0644) != 0)
    throw std::system_error(errno, std::generic_category(), "fchmod 0644 " + name_);
}

int tunnel_table_owner::duplicate_fd() const {
  const int copy = ::fcntl(fd_, F_DUPFD_CLOEXEC, 0);
  if (copy < 0)
    throw std::system_error(
        errno, std::generic_category(),
        "fcntl F_DUPFD_CLOEXEC " + name_ + " (a table descriptor for a worker)");
  return copy;
}

void tunnel_table_owner::write_identity(std::uint32_t index, const slot_identity& identity) {
  if (index >= layout_.slot_count)
    throw std::out_of_range("tunnel table slot " + std::to_string(index) + " out of range (" +
                            std::to_string(layout_.slot_count) + " slots)");
  // The caller's strings may fill their arrays; readers get a NUL in the last byte regardless.
  slot_identity copy = identity;
  copy.domain[sizeof(copy.domain) - 1] = '\0';
  copy.client_addr[sizeof(copy.client_addr) - 1] = '\0';

  identity_slot& target = identities_[index];
  // We are the only writer, so the counter is even here and no read-modify-write is needed.
  const auto sequence = target.sequence.load(std::memory_order_relaxed);
  target.sequence.store(sequence + 1, std::memory_order_relaxed);
  // Orders the odd value before the copy: a reader that sees any new byte also sees it changed.
  std::atomic_thread_fence(std::memory_order_release);
  std::memcpy(&target.identity, &copy, sizeof(copy));
  // Orders the copy before the even value: a reader that sees it sees the whole identity.
  std::atomic_thread_fence(std::memory_order_release);
  target.sequence.store(sequence + 2, std::memory_order_relaxed);
}

void tunnel_table_owner::clear(std::uint32_t index) {
  // Free first, so a reader never shows a live tunnel with its counters suddenly zeroed.
  write_identity(index, slot_identity{});
  auto& counters =
      *std::launder(reinterpret_cast<slot_counters*>(region_.data() + layout_.counters_at(index)));
  counters.open_visitors.store(0, std::memory_order_relaxed);
  counters.total_visitors.store(0, std::memory_order_relaxed);
  counters.bytes_in.store(0, std::memory_order_relaxed);
  counters.bytes_out.store(0, std::memory_order_relaxed);
  counters.bytes_spliced.store(0, std::memory_order_relaxed);
}

// ---- Worker side ---------------------------------------------------------------------------

slot_counter_writer::slot_counter_writer(std::string_view segment, std::uint32_t index)
    : slot_counter_writer(open_existing(std::string(segment), O_RDWR).fd, index, segment) {}

slot_counter_writer::slot_counter_writer(int fd, std::uint32_t index, std::string_view segment) {
  const std::string name(segment);
  const auto size = static_cast<std::size_t>(stat_fd(fd, name).st_size);
  // The header is only read (pread) into private memory: a worker (which reads internet traffic)
  // maps this tunnel's counters page alone, so it can change no other tunnel's counters, nor the
  // identities or the header.
  const auto layout = validate_header(read_header(fd, size, name), size, name);
  if (index >= layout.slot_count)
    throw std::runtime_error("slot " + std::to_string(index) + " is out of range: " + name +
                             " has " + std::to_string(layout.slot_count) + " slots");
  page_ = map_shared(fd, layout.page_size, layout.counters_at(index), PROT_READ | PROT_WRITE, name,
                     "this slot's counters");
  counters_ = std::launder(reinterpret_cast<slot_counters*>(page_.data()));
}

// ---- culvert-status side -------------------------------------------------------------------

tunnel_table_reader::tunnel_table_reader(std::string_view segment) {
  const std::string name(segment);
  const auto fd = open_existing(name, O_RDONLY);
  const auto info = stat_fd(fd.fd, name);
  require_private_writes(info, name);
  owner_uid_ = info.st_uid;
  const auto size = static_cast<std::size_t>(info.st_size);
  header_ = copy_header(fd.fd, size, name);
  layout_ = validate_header(header_, size, name);
  region_ = map_shared(fd.fd, layout_.segment_size, 0, PROT_READ, name, "table");
}

std::vector<slot_snapshot> tunnel_table_reader::live_slots() const {
  std::vector<slot_snapshot> live;
  for (std::uint32_t index = 0; index < layout_.slot_count; ++index) {
    auto snapshot = read(index);
    // Odd for this long means the supervisor died mid-write; showing the rest would hide that.
    if (!snapshot)
      throw std::runtime_error("tunnel table slot " + std::to_string(index) +
                               " stayed mid-update; its supervisor may have died while writing it");
    if (snapshot->identity.state != slot_state::free) live.push_back(*snapshot);
  }
  return live;
}

// Throws std::out_of_range for an index past the table; nullopt means no consistent copy could be
// taken within the retry budget. A free slot's counters page is not read (its counters are zero
// by the supervisor's reset), so listing an idle table touches no counters page.
std::optional<slot_snapshot> tunnel_table_reader::read(std::uint32_t index) const {
  if (index >= layout_.slot_count)
    throw std::out_of_range("tunnel table slot " + std::to_string(index) + " out of range (" +
                            std::to_string(layout_.slot_count) + " slots)");
  const auto* base = region_.data();
  const auto& source =
      reinterpret_cast<const identity_slot*>(base + layout_.identities_offset)[index];
  slot_snapshot snapshot;
  snapshot.index = index;
  for (int attempt = 0; attempt < read_attempts; ++attempt) {
    if (attempt >= spin_attempts) std::this_thread::sleep_for(retry_pause);
    const auto before = source.sequence.load(std::memory_order_acquire);
    if (before % 2 != 0) continue;  // being written right now
    std::memcpy(&snapshot.identity, &source.identity, sizeof(snapshot.identity));
    // Keeps the copy before the second load: if the writer started meanwhile, we see its odd value.
    std::atomic_thread_fence(std::memory_order_acquire);
    if (source.sequence.load(std::memory_order_relaxed) != before) continue;
    if (snapshot.identity.state == slot_state::free) return snapshot;
    const auto& counters =
        *reinterpret_cast<const slot_counters*>(base + layout_.counters_at(index));
    snapshot.open_visitors = counters.open_visitors.load(std::memory_order_relaxed);
    snapshot.total_visitors = counters.total_visitors.load(std::memory_order_relaxed);
    snapshot.bytes_in = counters.bytes_in.load(std::memory_order_relaxed);
    snapshot.bytes_out = counters.bytes_out.load(std::memory_order_relaxed);
    snapshot.bytes_spliced = counters.bytes_spliced.load(std::memory_order_relaxed);
    return snapshot;
  }
  return std::nullopt;
}

}  // namespace culvert::shared::ipc
