// The shared-memory tunnel table: one POSIX shared-memory segment per supervisor, a fixed array of
// slots, one slot per tunnel. Written by the supervisor (identity, state) and by the slot's worker
// (traffic counters); read by culvert-status without any lock.
// Invariant: no interprocess mutex and no pointers live in the segment, so a process that dies at
// any instruction leaves it readable: identity fields sit behind a sequence counter (odd = being
// written, readers retry), counters are lock-free atomics with a single writer each.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace culvert::shared::ipc {

inline constexpr std::uint64_t table_magic = 0x43554c5645525431ULL;  // "CULVERT1"
// 2: slot_counters gained bytes_spliced.
inline constexpr std::uint32_t table_version = 2;
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

// Fields written only by the supervisor, copied as one unit under the sequence counter.
struct slot_identity {
  slot_state state = slot_state::free;
  tunnel_kind kind = tunnel_kind::http;
  std::uint64_t tunnel_id = 0;
  std::int64_t worker_pid = 0;
  std::int64_t created_unix_ms = 0;  // when the domain was assigned
  std::uint16_t public_port = 0;
  std::uint16_t data_connections = 0;  // attached data connections, as last reported
  std::uint32_t worker_restarts = 0;
  char domain[domain_capacity] = {};
  char client_addr[client_addr_capacity] = {};
};

// Counters written only by the worker that owns the slot (relaxed atomics: each is exact on its
// own; a reader may see them at slightly different instants).
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

struct slot {
  std::atomic<std::uint32_t> sequence{0};  // odd while the supervisor rewrites `identity`
  slot_identity identity;
  slot_counters counters;
};

struct table_header {
  std::uint64_t magic = 0;
  std::uint32_t version = 0;
  std::uint32_t slot_count = 0;
  std::uint64_t slot_size = 0;
  std::int64_t supervisor_pid = 0;
  std::int64_t started_unix_ms = 0;
  char base_domain[domain_capacity] = {};
};

// A consistent copy of one slot, as a reader sees it.
struct slot_snapshot {
  std::uint32_t index = 0;
  slot_identity identity;
  std::uint64_t open_visitors = 0, total_visitors = 0, bytes_in = 0, bytes_out = 0,
                bytes_spliced = 0;
};

// The segment name for an instance: "/culvert-<instance>" (instance defaults to "default").
std::string segment_name(std::string_view instance);

// Supervisor side: creates the segment (removing a stale one left by a crashed supervisor; refuses
// with std::runtime_error while the supervisor recorded in an existing one is still alive) and
// removes it on destruction.
class tunnel_table_owner {
 public:
  tunnel_table_owner(std::string_view instance, std::uint32_t slot_count,
                     std::string_view base_domain);
  ~tunnel_table_owner();
  tunnel_table_owner(const tunnel_table_owner&) = delete;
  tunnel_table_owner& operator=(const tunnel_table_owner&) = delete;

  std::uint32_t slot_count() const;
  // Rewrites a slot's identity under its sequence counter (the only writer of identities).
  void write_identity(std::uint32_t index, const slot_identity& identity);
  // Returns the slot to the pool: identity cleared, counters zeroed.
  void clear(std::uint32_t index);
  // Makes `uid`:`gid` the segment's owner (fchown; mode stays 0644), so that unprivileged workers
  // running as that account can map it read-write and this process, once it has dropped to the
  // same account, can still unlink it: /dev/shm is sticky, only the owner may remove an entry.
  // Throws std::system_error naming fchown.
  void grant_to(uid_t uid, gid_t gid);
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  boost::interprocess::shared_memory_object memory_;
  boost::interprocess::mapped_region region_;
  table_header* header_ = nullptr;
  slot* slots_ = nullptr;
};

// Worker side: maps only its own slot, read-write, and updates that slot's counters.
class slot_counter_writer {
 public:
  slot_counter_writer(std::string_view segment, std::uint32_t index);
  slot_counters& counters() { return *counters_; }

 private:
  boost::interprocess::shared_memory_object memory_;
  boost::interprocess::mapped_region region_;
  slot_counters* counters_ = nullptr;
};

// culvert-status side: maps the segment read-only and copies slots out consistently.
class tunnel_table_reader {
 public:
  // Throws std::runtime_error with a clear message if the segment is missing or not a culvert
  // table.
  explicit tunnel_table_reader(std::string_view segment);
  const table_header& header() const { return *header_; }
  // Every slot whose state is not free, in slot order.
  std::vector<slot_snapshot> live_slots() const;
  std::optional<slot_snapshot> read(std::uint32_t index) const;

 private:
  boost::interprocess::shared_memory_object memory_;
  boost::interprocess::mapped_region region_;
  const table_header* header_ = nullptr;
  const slot* slots_ = nullptr;
};

}  // namespace culvert::shared::ipc
