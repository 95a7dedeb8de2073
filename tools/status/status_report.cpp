// culvert-status's report: JSON and table formatting of tunnel table snapshots, and the tool's
// run loop (map read-only, copy out, print). Runs in culvert-status.
// Invariant: nothing here writes to the segment; its bytes are treated as untrusted input.
#include "tools/status/status_report.hpp"

#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iterator>
#include <limits>
#include <ostream>

#include "shared/log/printable.hpp"

namespace culvert::tools {

namespace ipc = shared::ipc;

namespace {

std::int64_t uptime_seconds(const ipc::slot_snapshot& tunnel, std::int64_t now_unix_ms) {
  if (tunnel.identity.created_unix_ms <= 0) return 0;
  return std::max<std::int64_t>(0, (now_unix_ms - tunnel.identity.created_unix_ms) / 1000);
}

// Zero means "not known yet" for ports and pids (a worker still starting); shown as "-".
std::string number_or_dash(std::int64_t value) {
  return value == 0 ? "-" : std::to_string(value);
}

std::string text_or_dash(std::string text) {
  return text.empty() ? "-" : text;
}

// Instance names become part of a shm_open() name: a '/' or a NUL would address something else.
bool valid_instance(std::string_view instance) {
  return !instance.empty() && std::all_of(instance.begin(), instance.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

std::int64_t system_now_unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

std::string field_text(const char* field, std::size_t capacity) {
  return shared::log::printable(std::string_view(field, ::strnlen(field, capacity)), capacity,
                                shared::log::unprintable_as::question_mark);
}

std::string format_uptime(std::int64_t seconds) {
  seconds = std::max<std::int64_t>(0, seconds);
  char text[32];
  if (seconds < 60) {
    std::snprintf(text, sizeof(text), "%llds", static_cast<long long>(seconds));
  } else if (seconds < 3600) {
    std::snprintf(text, sizeof(text), "%lldm%02llds", static_cast<long long>(seconds / 60),
                  static_cast<long long>(seconds % 60));
  } else if (seconds < 86400) {
    std::snprintf(text, sizeof(text), "%lldh%02lldm", static_cast<long long>(seconds / 3600),
                  static_cast<long long>(seconds % 3600 / 60));
  } else {
    std::snprintf(text, sizeof(text), "%lldd%02lldh", static_cast<long long>(seconds / 86400),
                  static_cast<long long>(seconds % 86400 / 3600));
  }
  return text;
}

std::string format_share(std::uint64_t part, std::uint64_t whole) {
  if (whole == 0) return "-";
  if (part >= whole) return "100%";
  // In floating point: part * 100 could overflow 64 bits. Clamped so rounding never shows 100%.
  const auto percent = static_cast<int>(static_cast<long double>(part) * 100 / whole);
  return std::to_string(std::min(percent, 99)) + "%";
}

std::string format_bytes(std::uint64_t bytes) {
  if (bytes < 1024) return std::to_string(bytes) + " B";
  static constexpr const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes) / 1024;
  std::size_t unit = 0;
  // Move up a unit before "%.1f" would round to "1024.0".
  while (value >= 1023.95 && unit + 1 < std::size(units)) {
    value /= 1024;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f %s", value, units[unit]);
  return text;
}

bool supervisor_running(const ipc::table_header& header) {
  const auto pid = header.supervisor_pid;
  // pid <= 0 would probe a process group rather than a process.
  if (pid <= 0 || pid > std::numeric_limits<pid_t>::max()) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

nlohmann::json to_json(const ipc::table_header& header,
                       const std::vector<ipc::slot_snapshot>& tunnels, std::int64_t now_unix_ms,
                       std::string_view instance) {
  auto list = nlohmann::json::array();
  for (const auto& tunnel : tunnels) {
    const auto& id = tunnel.identity;
    list.push_back({
        {"slot", tunnel.index},
        {"domain", field_text(id.domain)},
        {"public_port", id.public_port},
        {"worker_pid", id.worker_pid},
        {"client_addr", field_text(id.client_addr)},
        {"state", ipc::to_string(id.state)},
        {"kind", ipc::to_string(id.kind)},
        {"created_unix_ms", id.created_unix_ms},
        {"uptime_s", uptime_seconds(tunnel, now_unix_ms)},
        {"open_connections", tunnel.open_visitors},
        {"total_connections", tunnel.total_visitors},
        {"bytes_in", tunnel.bytes_in},
        {"bytes_out", tunnel.bytes_out},
        {"bytes_spliced", tunnel.bytes_spliced},
        {"data_connections", id.data_connections},
        {"worker_restarts", id.worker_restarts},
    });
  }
  return {
      {"instance", std::string(instance)},
      {"supervisor_pid", header.supervisor_pid},
      {"base_domain", field_text(header.base_domain)},
      {"slot_count", header.slot_count},
      {"tunnels", std::move(list)},
  };
}

std::string to_table(const ipc::table_header& header,
                     const std::vector<ipc::slot_snapshot>& tunnels, std::int64_t now_unix_ms,
                     std::string_view instance) {
  std::string out = "instance " + std::string(instance) + ": supervisor pid " +
                    std::to_string(header.supervisor_pid) + ", base domain " +
                    text_or_dash(field_text(header.base_domain)) + ", " +
                    std::to_string(tunnels.size()) + " of " + std::to_string(header.slot_count) +
                    " slots in use\n";
  if (tunnels.empty()) return out + "no tunnels\n";

  using row = std::vector<std::string>;
  std::vector<row> rows{{"DOMAIN", "PORT", "PID", "CLIENT", "STATE", "KIND", "UPTIME", "OPEN",
                         "TOTAL", "IN", "OUT", "SPLICED"}};
  // Numbers line up on the right, names on the left.
  const std::vector<bool> right = {false, true, true, false, false, false,
                                   true,  true, true, true,  true,  true};
  for (const auto& tunnel : tunnels) {
    const auto& id = tunnel.identity;
    rows.push_back({
        text_or_dash(field_text(id.domain)),
        number_or_dash(id.public_port),
        number_or_dash(id.worker_pid),
        text_or_dash(field_text(id.client_addr)),
        std::string(ipc::to_string(id.state)),
        std::string(ipc::to_string(id.kind)),
        id.created_unix_ms > 0 ? format_uptime(uptime_seconds(tunnel, now_unix_ms)) : "-",
        std::to_string(tunnel.open_visitors),
        std::to_string(tunnel.total_visitors),
        format_bytes(tunnel.bytes_in),
        format_bytes(tunnel.bytes_out),
        format_share(tunnel.bytes_spliced, tunnel.bytes_in + tunnel.bytes_out),
    });
  }
  std::vector<std::size_t> widths(right.size(), 0);
  for (const auto& r : rows)
    for (std::size_t column = 0; column < r.size(); ++column)
      widths[column] = std::max(widths[column], r[column].size());
  for (const auto& r : rows) {
    std::string line;
    for (std::size_t column = 0; column < r.size(); ++column) {
      if (column > 0) line += "  ";
      const std::string padding(widths[column] - r[column].size(), ' ');
      line += right[column] ? padding + r[column] : r[column] + padding;
    }
    line.erase(line.find_last_not_of(' ') + 1);
    out += line + '\n';
  }
  return out;
}

int run_status(const status_options& options, std::ostream& out, std::ostream& err) {
  if (!valid_instance(options.instance)) {
    err << "culvert-status: invalid instance name '"
        << field_text(options.instance.c_str(), options.instance.size())
        << "': use letters, digits, '_' and '-'\n";
    return 1;
  }
  const auto segment = ipc::segment_name(options.instance);
  try {
    const ipc::tunnel_table_reader reader(segment);
    const auto tunnels = reader.live_slots();
    const auto now = system_now_unix_ms();
    if (options.json) {
      // replace: a JSON consumer must never get a document that fails to parse.
      out << to_json(reader.header(), tunnels, now, options.instance)
                 .dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
          << '\n';
    } else {
      out << to_table(reader.header(), tunnels, now, options.instance);
    }
    out.flush();
    if (!supervisor_running(reader.header())) {
      err << "culvert-status: supervisor pid " << reader.header().supervisor_pid << " recorded in "
          << segment
          << " is not running; this table was left behind by a supervisor that crashed\n";
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    err << "culvert-status: " << e.what() << '\n';
    return 1;
  }
}

}  // namespace culvert::tools
