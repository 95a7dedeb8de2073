// The shared-memory tunnel table: creation and removal by the supervisor, counter mapping by each
// worker, lock-free consistent copies for culvert-status.
// Invariant: the header is fully written before its magic is (release), and a slot's identity is
// only ever written between an odd and the next even value of its sequence counter, so a reader
// that sees the same even value before and after its copy holds an untorn identity.
#include "shared/ipc/tunnel_table.hpp"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/permissions.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <type_traits>

namespace culvert::shared::ipc {

namespace bip = boost::interprocess;

namespace {

// The slots follow the header directly; both sides compute addresses from this alone.
constexpr std::size_t slots_offset = sizeof(table_header);
static_assert(slots_offset % alignof(slot) == 0, "slots must start aligned right after the header");
static_assert(std::is_standard_layout_v<table_header> && std::is_standard_layout_v<slot>);
static_assert(std::is_trivially_copyable_v<slot_identity>, "identities are copied with memcpy");
static_assert(std::is_trivially_destructible_v<slot>, "slots are never destroyed, only unmapped");
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

std::uint64_t region_size(std::uint32_t slot_count) {
  return slots_offset + std::uint64_t{slot_count} * sizeof(slot);
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

// Opens an existing segment, turning Boost's bare "No such file or directory" into a sentence.
bip::shared_memory_object open_segment(const std::string& segment, bip::mode_t mode) {
  try {
    return bip::shared_memory_object(bip::open_only, segment.c_str(), mode);
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::not_found_error)
      throw std::runtime_error(not_running_message(segment));
    throw std::runtime_error("cannot open shared-memory segment " + segment + ": " + e.what());
  }
}

bip::offset_t segment_size(const bip::shared_memory_object& memory, const std::string& segment) {
  bip::offset_t size = 0;
  if (!memory.get_size(size))
    throw std::runtime_error("cannot read the size of shared-memory segment " + segment + ": " +
                             std::strerror(errno));
  return size;
}

// Checks that a mapped segment is a table this build can read; `mapped` is the mapping's length.
void validate_header(const table_header& header, std::size_t mapped, const std::string& segment) {
  const auto magic = load_magic(header);
  if (magic != table_magic)
    throw std::runtime_error("shared-memory segment " + segment +
                             " is not a culvert tunnel table (magic " + hex(magic) + ", expected " +
                             hex(table_magic) + ")");
  if (header.version != table_version)
    throw std::runtime_error("shared-memory segment " + segment + " has table version " +
                             std::to_string(header.version) + " but this program reads version " +
                             std::to_string(table_version) + " (mixed culvert versions?)");
  if (header.slot_size != sizeof(slot))
    throw std::runtime_error("shared-memory segment " + segment + " has " +
                             std::to_string(header.slot_size) +
                             "-byte slots but this program uses " + std::to_string(sizeof(slot)) +
                             " (mixed culvert builds?)");
  if (mapped < region_size(header.slot_count))
    throw std::runtime_error("shared-memory segment " + segment +
                             " is truncated: " + std::to_string(mapped) + " bytes, but " +
                             std::to_string(header.slot_count) + " slots need " +
                             std::to_string(region_size(header.slot_count)));
}

// Maps a whole segment after checking it can hold a header (mapping 0 bytes throws obscurely).
bip::mapped_region map_segment(const bip::shared_memory_object& memory, bip::mode_t mode,
                               const std::string& segment) {
  const auto size = segment_size(memory, segment);
  if (size < static_cast<bip::offset_t>(sizeof(table_header)))
    throw std::runtime_error("shared-memory segment " + segment +
                             " is not a culvert tunnel table (" + std::to_string(size) +
                             " bytes, smaller than a table header)");
  try {
    return bip::mapped_region(memory, mode);
  } catch (const bip::interprocess_exception& e) {
    throw std::runtime_error("cannot map shared-memory segment " + segment + ": " + e.what());
  }
}

// What an existing segment says about its owner, once its creator has had time to finish it.
struct existing_owner {
  bool initialized = false;  // carries the table magic
  std::int64_t pid = 0;
};

std::optional<existing_owner> inspect_existing(const std::string& segment) {
  bip::shared_memory_object memory;
  try {
    memory = bip::shared_memory_object(bip::open_only, segment.c_str(), bip::read_only);
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::not_found_error) return std::nullopt;
    throw std::runtime_error("cannot inspect existing shared-memory segment " + segment + ": " +
                             e.what());
  }
  for (int check = 0;; ++check) {
    if (segment_size(memory, segment) >= static_cast<bip::offset_t>(sizeof(table_header))) {
      const bip::mapped_region region(memory, bip::read_only, 0, sizeof(table_header));
      const auto& header = *static_cast<const table_header*>(region.get_address());
      if (load_magic(header) == table_magic) return existing_owner{true, header.supervisor_pid};
    }
    // A supervisor starting right now creates, sizes, then fills the segment within microseconds;
    // give it that chance before calling its segment garbage.
    if (check + 1 == initialization_checks) return existing_owner{};
    std::this_thread::sleep_for(initialization_pause);
  }
}

// Removes the segment if it is left over from a dead supervisor; throws if its owner still runs.
void remove_if_stale(const std::string& segment) {
  const auto owner = inspect_existing(segment);
  if (!owner) return;
  std::string why;
  if (!owner->initialized) {
    why = "it is not an initialized culvert table";
  } else if (owner->pid == ::getpid()) {
    why = "it was left behind by this process";
  } else if (process_alive(owner->pid)) {
    throw std::runtime_error("another supervisor (pid " + std::to_string(owner->pid) +
                             ") owns shared-memory segment " + segment + "; use --instance");
  } else {
    why = "its supervisor (pid " + std::to_string(owner->pid) + ") is no longer running";
  }
  spdlog::warn("removing stale shared-memory segment {}: {}", segment, why);
  if (!bip::shared_memory_object::remove(segment.c_str()) && errno != ENOENT)
    throw std::runtime_error("shm_unlink " + segment +
                             " (removing a stale table) failed: " + std::strerror(errno));
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

// ---- Supervisor side -----------------------------------------------------------------------

tunnel_table_owner::tunnel_table_owner(std::string_view instance, std::uint32_t slot_count,
                                       std::string_view base_domain)
    : name_(segment_name(instance)) {
  const auto size = region_size(slot_count);
  // Create exclusively: if another supervisor creates the name between our check and our create,
  // look again rather than share (or unlink) its table.
  for (int attempt = 1;; ++attempt) {
    remove_if_stale(name_);
    try {
      // 0644: culvert-status, possibly run by another user, maps it read-only.
      memory_ = bip::shared_memory_object(bip::create_only, name_.c_str(), bip::read_write,
                                          bip::permissions(0644));
      break;
    } catch (const bip::interprocess_exception& e) {
      if (e.get_error_code() != bip::already_exists_error || attempt == 3)
        throw std::runtime_error("shm_open " + name_ +
                                 " (creating the tunnel table) failed: " + e.what());
    }
  }
  try {
    memory_.truncate(static_cast<bip::offset_t>(size));
    region_ = bip::mapped_region(memory_, bip::read_write, 0, size);
  } catch (const bip::interprocess_exception& e) {
    bip::shared_memory_object::remove(name_.c_str());
    throw std::runtime_error("sizing shared-memory segment " + name_ + " to " +
                             std::to_string(size) + " bytes failed: " + e.what());
  }

  auto* base = static_cast<char*>(region_.get_address());
  header_ = new (base) table_header{};
  for (std::uint32_t i = 0; i < slot_count; ++i)
    new (base + slots_offset + i * sizeof(slot)) slot{};
  slots_ = std::launder(reinterpret_cast<slot*>(base + slots_offset));

  header_->version = table_version;
  header_->slot_count = slot_count;
  header_->slot_size = sizeof(slot);
  header_->supervisor_pid = ::getpid();
  header_->started_unix_ms = now_unix_ms();
  copy_field(header_->base_domain, sizeof(header_->base_domain), base_domain);
  // Last: a reader or a competing supervisor that sees the magic sees every field above.
  std::atomic_ref<std::uint64_t>(header_->magic).store(table_magic, std::memory_order_release);
}

tunnel_table_owner::~tunnel_table_owner() {
  // A forked child inherits this object; only the process that created the table may unlink it.
  if (!header_ || header_->supervisor_pid != ::getpid()) return;
  if (!bip::shared_memory_object::remove(name_.c_str()) && errno != ENOENT)
    spdlog::warn("shm_unlink {} (removing the tunnel table) failed: {}", name_,
                 std::strerror(errno));
}

std::uint32_t tunnel_table_owner::slot_count() const {
  return header_->slot_count;
}

void tunnel_table_owner::grant_to(uid_t uid, gid_t gid) {
  const int fd = memory_.get_mapping_handle().handle;
  if (::fchown(fd, uid, gid) != 0)
    throw std::system_error(errno, std::generic_category(),
                            "fchown " + name_ + " to " + std::to_string(uid) + ":" +
                                std::to_string(gid) + " (handing the tunnel table to the workers)");
  // Owner read-write (workers' counters), everyone else read-only (culvert-status); never more.
  if (::fchmod(fd, 0644) != 0)
    throw std::system_error(errno, std::generic_category(), "fchmod 0644 " + name_);
}

void tunnel_table_owner::write_identity(std::uint32_t index, const slot_identity& identity) {
  if (index >= header_->slot_count)
    throw std::out_of_range("tunnel table slot " + std::to_string(index) + " out of range (" +
                            std::to_string(header_->slot_count) + " slots)");
  // The caller's strings may fill their arrays; readers get a NUL in the last byte regardless.
  slot_identity copy = identity;
  copy.domain[sizeof(copy.domain) - 1] = '\0';
  copy.client_addr[sizeof(copy.client_addr) - 1] = '\0';

  slot& target = slots_[index];
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
  auto& counters = slots_[index].counters;
  counters.open_visitors.store(0, std::memory_order_relaxed);
  counters.total_visitors.store(0, std::memory_order_relaxed);
  counters.bytes_in.store(0, std::memory_order_relaxed);
  counters.bytes_out.store(0, std::memory_order_relaxed);
  counters.bytes_spliced.store(0, std::memory_order_relaxed);
}

// ---- Worker side ---------------------------------------------------------------------------

slot_counter_writer::slot_counter_writer(std::string_view segment, std::uint32_t index) {
  const std::string name(segment);
  memory_ = open_segment(name, bip::read_write);
  const auto size = segment_size(memory_, name);
  if (size < static_cast<bip::offset_t>(sizeof(table_header)))
    throw std::runtime_error("shared-memory segment " + name + " is not a culvert tunnel table (" +
                             std::to_string(size) + " bytes, smaller than a table header)");
  try {
    // The header, read-only and only for the checks; then this tunnel's slot alone, writable.
    // A worker (which reads internet traffic) can thus change no other tunnel's counters, and
    // maps a page or two instead of the whole table.
    const bip::mapped_region head(memory_, bip::read_only, 0, sizeof(table_header));
    const auto& header = *static_cast<const table_header*>(head.get_address());
    validate_header(header, static_cast<std::size_t>(size), name);
    if (index >= header.slot_count)
      throw std::runtime_error("slot " + std::to_string(index) + " is out of range: " + name +
                               " has " + std::to_string(header.slot_count) + " slots");
    region_ = bip::mapped_region(memory_, bip::read_write, slots_offset + index * sizeof(slot),
                                 sizeof(slot));
  } catch (const bip::interprocess_exception& e) {
    throw std::runtime_error("cannot map shared-memory segment " + name + ": " + e.what());
  }
  counters_ = &static_cast<slot*>(region_.get_address())->counters;
}

// ---- culvert-status side -------------------------------------------------------------------

tunnel_table_reader::tunnel_table_reader(std::string_view segment) {
  const std::string name(segment);
  memory_ = open_segment(name, bip::read_only);
  region_ = map_segment(memory_, bip::read_only, name);
  const auto* base = static_cast<const char*>(region_.get_address());
  header_ = reinterpret_cast<const table_header*>(base);
  validate_header(*header_, region_.get_size(), name);
  slots_ = reinterpret_cast<const slot*>(base + slots_offset);
}

std::vector<slot_snapshot> tunnel_table_reader::live_slots() const {
  std::vector<slot_snapshot> live;
  for (std::uint32_t index = 0; index < header_->slot_count; ++index) {
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
// taken within the retry budget.
std::optional<slot_snapshot> tunnel_table_reader::read(std::uint32_t index) const {
  if (index >= header_->slot_count)
    throw std::out_of_range("tunnel table slot " + std::to_string(index) + " out of range (" +
                            std::to_string(header_->slot_count) + " slots)");
  const slot& source = slots_[index];
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
    snapshot.open_visitors = source.counters.open_visitors.load(std::memory_order_relaxed);
    snapshot.total_visitors = source.counters.total_visitors.load(std::memory_order_relaxed);
    snapshot.bytes_in = source.counters.bytes_in.load(std::memory_order_relaxed);
    snapshot.bytes_out = source.counters.bytes_out.load(std::memory_order_relaxed);
    snapshot.bytes_spliced = source.counters.bytes_spliced.load(std::memory_order_relaxed);
    return snapshot;
  }
  return std::nullopt;
}

}  // namespace culvert::shared::ipc
