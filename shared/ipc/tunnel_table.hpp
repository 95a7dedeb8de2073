// The shared-memory tunnel table: one POSIX shared-memory segment per supervisor, laid out as a
// header page, an array of slot identities (written by the supervisor) and one page of traffic
// counters per slot (written by that slot's worker, which maps that page and nothing else); read
// by culvert-status without any lock.
// Invariant: no interprocess mutex and no pointers live in the segment, and every process keeps
// the layout (slot count, offsets) in private memory, checked once, never re-read from the segment.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace culvert::shared::ipc {

inline constexpr std::uint64_t table_magic = 0x43554c5645525431ULL;  // "CULVERT1"
// 2: slot_counters gained bytes_spliced.
// 3: page-aligned layout (header page | identities | one counters page per slot); no tunnel_id.
inline constexpr std::uint32_t table_version = 3;
inline constexpr std::size_t domain_capacity = 128;      // bytes, NUL-terminated
inline constexpr std::size_t client_addr_capacity = 64;  // "[v6addr]:port", NUL-terminated

enum class slot_state : std::uint32_t {
  free = 0,      // in the pool
  starting = 1,  // domain assigned, worker being started
  active = 2,    // client connected, worker running
  held = 3,      // client lost, domain kept for the grace period
  stopping = 4,  // grace expired or shutdown, worker being stopped
};
std::string_view to_string(slot_state);

enum class tunnel_kind : std::uint32_t { http = 1, tcp = 2 };
std::string_view to_string(tunnel_kind);

// Fields written only by the supervisor, copied as one unit under the sequence counter. Nothing
// here opens anything: the segment is world-readable (the tunnel id and secret stay out).
struct slot_identity {
  slot_state state = slot_state::free;
  tunnel_kind kind = tunnel_kind::http;
  std::int64_t worker_pid = 0;
  std::int64_t created_unix_ms = 0;  // when the domain was assigned
  std::uint16_t public_port = 0;
  std::uint16_t data_connections = 0;  // attached data connections, as last reported
  std::uint32_t worker_restarts = 0;
  char domain[domain_capacity] = {};
  char client_addr[client_addr_capacity] = {};
};

// Counters written only by the worker that owns the slot (relaxed atomics: each is exact on its
// own; a reader may see them at slightly different instants). Each slot's sit at the start of a
// page of their own.
struct slot_counters {
  std::atomic<std::uint64_t> open_visitors{0};
  std::atomic<std::uint64_t> total_visitors{0};
  std::atomic<std::uint64_t> bytes_in{0};   // visitor -> local service
  std::atomic<std::uint64_t> bytes_out{0};  // local service -> visitor
  // The part of bytes_in + bytes_out the worker moved with splice(2), socket to pipe to socket,
  // without copying it through its memory (bulk clear-text streams; the rest was copied).
  std::atomic<std::uint64_t> bytes_spliced{0};
  static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
};

// One element of the identity array (supervisor-written, read-only to everyone else).
struct identity_slot {
  std::atomic<std::uint32_t> sequence{0};  // odd while the supervisor rewrites `identity`
  slot_identity identity;
};

// Offsets are in bytes from the start of the segment; all but the header's are page multiples.
struct table_header {
  std::uint64_t magic = 0;
  std::uint32_t version = 0;
  std::uint32_t slot_count = 0;
  std::uint32_t page_size = 0;           // the counters stride; readers check it is theirs
  std::uint32_t identity_slot_size = 0;  // sizeof(identity_slot) (build check)
  std::uint64_t identities_offset = 0;   // = page_size
  std::uint64_t counters_offset = 0;     // slot i's counters at counters_offset + i * page_size
  std::uint64_t segment_size = 0;        // counters_offset + slot_count * page_size
  std::int64_t supervisor_pid = 0;
  std::int64_t started_unix_ms = 0;
  char base_domain[domain_capacity] = {};
};

// Where everything lies for a given slot count on this machine; what every process keeps in
// private memory instead of trusting the segment's copy.
struct table_layout {
  std::uint32_t slot_count = 0;
  std::size_t page_size = 0;
  std::size_t identities_offset = 0;
  std::size_t counters_offset = 0;
  std::size_t segment_size = 0;
  std::size_t counters_at(std::uint32_t index) const { return counters_offset + index * page_size; }
};
table_layout layout_for(std::uint32_t slot_count);

// A consistent copy of one slot, as a reader sees it.
struct slot_snapshot {
  std::uint32_t index = 0;
  slot_identity identity;
  std::uint64_t open_visitors = 0, total_visitors = 0, bytes_in = 0, bytes_out = 0,
                bytes_spliced = 0;
};

// The segment name for an instance: "/culvert-<instance>" (instance defaults to "default"), and
// its path on Linux: "/dev/shm/culvert-<instance>".
std::string segment_name(std::string_view instance);
std::string segment_path(std::string_view segment);

// A shared mapping, unmapped on destruction. Move-only.
class shared_mapping {
 public:
  shared_mapping() = default;
  shared_mapping(void* address, std::size_t length) : address_(address), length_(length) {}
  shared_mapping(shared_mapping&& other) noexcept;
  shared_mapping& operator=(shared_mapping&& other) noexcept;
  ~shared_mapping();
  char* data() const { return static_cast<char*>(address_); }
  std::size_t size() const { return length_; }

 private:
  void* address_ = nullptr;
  std::size_t length_ = 0;
};

// Supervisor side: creates the segment and removes it on destruction. An existing segment is
// trusted only if no symlink, owned by this process's euid or `trusted_uid` (the account the
// supervisor drops to) and not writable by group or others; one that is not is removed if we may
// (root), otherwise refused with std::runtime_error naming its path and owner. A trusted one is
// replaced if stale, refused while the supervisor recorded in it is still alive.
class tunnel_table_owner {
 public:
  tunnel_table_owner(std::string_view instance, std::uint32_t slot_count,
                     std::string_view base_domain, std::optional<uid_t> trusted_uid = {});
  ~tunnel_table_owner();
  tunnel_table_owner(const tunnel_table_owner&) = delete;
  tunnel_table_owner& operator=(const tunnel_table_owner&) = delete;

  std::uint32_t slot_count() const { return layout_.slot_count; }
  const table_layout& layout() const { return layout_; }
  // Rewrites a slot's identity under its sequence counter (the only writer of identities).
  void write_identity(std::uint32_t index, const slot_identity& identity);
  // Returns the slot to the pool: identity cleared, counters zeroed.
  void clear(std::uint32_t index);
  // Makes `uid`:`gid` the segment's owner (fchown; mode stays 0644), so that this process, once it
  // has dropped to that account, can still unlink it: /dev/shm is sticky, only the owner may
  // remove an entry. Throws std::system_error naming fchown.
  void grant_to(uid_t uid, gid_t gid);
  // A new read-write descriptor of the segment, close-on-exec, for a worker to inherit and give
  // to slot_counter_writer(fd, slot). The caller owns it. Throws std::system_error.
  int duplicate_fd() const;
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  table_layout layout_;
  int fd_ = -1;
  pid_t creator_ = 0;
  shared_mapping region_;
  identity_slot* identities_ = nullptr;
};

// Worker side: maps only its own slot's counters page, read-write, nothing else of the segment.
class slot_counter_writer {
 public:
  // Opens the segment by name (the worker runs as the segment's owner).
  slot_counter_writer(std::string_view segment, std::uint32_t index);
  // From a read-write descriptor of the segment (tunnel_table_owner::duplicate_fd); `fd` stays
  // the caller's. The header is read with pread into private memory and checked, never mapped.
  slot_counter_writer(int fd, std::uint32_t index, std::string_view segment);
  slot_counters& counters() { return *counters_; }

 private:
  shared_mapping page_;
  slot_counters* counters_ = nullptr;
};

// culvert-status side: maps the segment read-only and copies slots out consistently.
class tunnel_table_reader {
 public:
  // Throws std::runtime_error with a clear message if the segment is missing, writable by group
  // or others, or not a culvert table. The header is copied once; its copy drives every bound.
  explicit tunnel_table_reader(std::string_view segment);
  const table_header& header() const { return header_; }
  uid_t owner_uid() const { return owner_uid_; }
  // Every slot whose state is not free, in slot order. Reads counters pages of live slots only.
  std::vector<slot_snapshot> live_slots() const;
  std::optional<slot_snapshot> read(std::uint32_t index) const;

 private:
  table_header header_;
  table_layout layout_;
  uid_t owner_uid_ = 0;
  shared_mapping region_;
};

}  // namespace culvert::shared::ipc
