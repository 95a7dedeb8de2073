// culvert-status's report: formats a copy of the shared-memory tunnel table as JSON or as a table
// for people. Runs in culvert-status (and its unit tests) and never writes to the segment.
// Invariant: every string taken from the segment is bounded by its field's capacity (a missing NUL
// is tolerated) and reduced to printable ASCII before it reaches a terminal or a JSON document.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "shared/ipc/tunnel_table.hpp"

namespace culvert::tools {

// {"instance", "supervisor_pid", "base_domain", "slot_count", "tunnels": [...]}, one tunnel per
// snapshot in the order given; uptime_s counts from created_unix_ms to now_unix_ms.
nlohmann::json to_json(const shared::ipc::table_header& header,
                       const std::vector<shared::ipc::slot_snapshot>& tunnels,
                       std::int64_t now_unix_ms, std::string_view instance);

// A line naming the instance, supervisor pid and base domain, then either "no tunnels" or aligned
// columns DOMAIN PORT PID CLIENT STATE KIND UPTIME OPEN TOTAL IN OUT SPLICED. Ends with a newline.
std::string to_table(const shared::ipc::table_header& header,
                     const std::vector<shared::ipc::slot_snapshot>& tunnels,
                     std::int64_t now_unix_ms, std::string_view instance);

// "35s", "4m05s", "1h02m", "3d04h"; negative durations (clock steps) show as "0s".
std::string format_uptime(std::int64_t seconds);
// "512 B", "1.0 KiB", "1.2 MiB", ... up to "TiB".
std::string format_bytes(std::uint64_t bytes);
// `part` as a whole percentage of `whole`, rounded down ("99%" until every byte); "-" for none.
std::string format_share(std::uint64_t part, std::uint64_t whole);
// The text of a fixed-size field: up to its first NUL or its capacity, whichever comes first, with
// every byte outside printable ASCII replaced by '?'.
std::string field_text(const char* field, std::size_t capacity);
template <std::size_t Capacity>
std::string field_text(const char (&field)[Capacity]) {
  return field_text(field, Capacity);
}

// Whether the supervisor recorded in the header still runs (kill(pid, 0) succeeds or says EPERM).
bool supervisor_running(const shared::ipc::table_header& header);

struct status_options {
  std::string instance = "default";
  bool json = false;
};

// The whole tool: maps /culvert-<instance> read-only and prints the report to `out`. Returns 0, or
// 1 after writing a message to `err` when the instance name is invalid, the segment is missing, a
// symlink, writable by group or others, or not a readable table, or its supervisor is no longer
// running (the report is printed first).
int run_status(const status_options& options, std::ostream& out, std::ostream& err);

}  // namespace culvert::tools
