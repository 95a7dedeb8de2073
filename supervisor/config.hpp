// The supervisor's configuration: embedded defaults, overridden by a TOML file ([server] table),
// overridden by command-line flags. Runs in the supervisor, once, before anything is bound.
// Invariant: a config that left parse_arguments() has passed validate(), so the rest of the
// supervisor never re-checks ranges, addresses or names.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "shared/util/secrets.hpp"

namespace culvert::supervisor {

struct config {
  // IP:PORT or [IPv6]:PORT for control AND data connections (port 0 = any).
  std::string control_address = "127.0.0.1:7835";
  std::string public_bind = "127.0.0.1";  // IP address the tunnels' public listeners bind
  std::string public_host;                // host shown in tcp:// URLs; empty = public_bind
  std::string base_domain = "localhost";  // tunnels get <label>.<base_domain>
  std::uint16_t port_min = 20000, port_max = 20999;  // public port range
  std::vector<std::string> tokens;           // accepted client tokens; empty = no token needed
  std::string tokens_file;                   // TOML [[token]] entries with limits; not with tokens
  std::uint32_t max_tunnels = 1000;          // as many as the default port range has ports
  std::uint32_t max_tunnels_per_token = 16;  // default of a token's max_tunnels
  std::uint32_t max_tunnels_per_address = 64;  // per IPv4 address or IPv6 /56
  std::uint32_t max_handshakes_per_address = 16;
  std::chrono::milliseconds auth_failure_delay{1000};  // first bad token's wait; doubles per retry
  std::chrono::seconds grace_period{30};               // a lost client's domain is held this long
  std::chrono::seconds heartbeat_interval{5};
  std::chrono::seconds heartbeat_timeout{30};  // silence that counts as a lost client
  std::chrono::seconds handshake_timeout{5};
  // Handshakes waiting for their first frame, and again those opening new tunnels.
  std::uint32_t max_pending_handshakes = 256;
  // Handshakes that proved a live tunnel's id and secret (reclaims): a budget of their own.
  std::uint32_t max_pending_reclaims = 256;
  std::uint32_t max_visitors = 16384;  // open visitor connections per tunnel (worker limit)
  std::uint8_t data_connections = 2;   // data connections each client opens (1..16)
  std::string tls_cert, tls_key;       // PEM files; both empty = clear text
  std::string instance = "default";    // names the shared-memory segment /culvert-<instance>
  std::string worker_path;             // empty = culvert-worker beside the supervisor
  std::string user = "nobody";         // account for workers and the dropped supervisor (if root)
  // Started as root, each worker runs as uid = gid = worker_uid_base + its slot, so tenants cannot
  // signal, trace or read each other; 0 = every worker as `user`. The default sits in the span
  // systemd's UIDS-GIDS.md leaves unassigned (1879048192-2147352575); checked free at start.
  std::uint32_t worker_uid_base = 1'900'000'000;
  std::string log_level = "info";  // trace debug info warn error

  // What visitors can make a worker hold (security.md 5): visitors per IPv4 address or IPv6 /64
  // per tunnel, seconds a stream may move no byte either way, relay buffers of all its streams.
  std::uint32_t max_visitors_per_source = 256;
  std::chrono::seconds stream_idle_timeout{600};
  std::uint32_t buffer_budget_mb = 128;

  friend bool operator==(const config&, const config&) = default;
};

// Bounds enforced by validate(); public so that help texts and tests quote the same numbers.
namespace limits {
inline constexpr std::uint32_t max_tunnels = 65536;  // one shared-memory slot each
inline constexpr std::uint32_t max_pending_handshakes = 65536;
inline constexpr std::uint8_t max_data_connections = 16;
inline constexpr std::uint32_t max_visitors = 1'000'000;
inline constexpr std::int64_t max_seconds = 31'536'000;  // one year: far from clock overflow
// The handshake carries it as 16-bit seconds; an hour is already past any NAT's idle timeout.
inline constexpr std::int64_t max_heartbeat_interval = 3600;
inline constexpr std::size_t min_token_bytes = shared::util::min_token_bytes;  // as everywhere
inline constexpr std::size_t max_token_bytes = shared::util::max_token_bytes;
inline constexpr std::size_t max_instance_chars = 32;
inline constexpr std::int64_t max_auth_failure_delay_ms = 60'000;
inline constexpr std::size_t max_user_chars = 32;               // useradd's limit
inline constexpr std::uint32_t min_worker_uid_base = 65536;     // above the 16-bit ids, nobody
inline constexpr std::uint32_t max_worker_uid = 4'294'967'293;  // (uid_t)-1 and -2 are special

inline constexpr std::uint32_t max_buffer_budget_mb = 1 << 20;  // a TiB: far past any host
}  // namespace limits

class config_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct parse_result {
  std::optional<config> cfg;  // set when the supervisor should run
  int exit_code = 0;          // when cfg is empty: 0 (--help/--version/--print-config) or 2 (error)
  std::string output;         // text to print (help, version, effective config, or error message)
  std::vector<std::string> warnings;  // with cfg: to log once logging is set up
};

std::string_view version();

// Never throws for bad input: every problem becomes exit_code 2 and a message in output.
parse_result parse_arguments(int argc, const char* const* argv);

// Defaults overridden by the file's [server] table. Checks each value on its own (type, range,
// syntax) so errors carry the line; cross-field checks are left to validate().
// Throws config_error("SOURCE: line L: message").
config load_toml(std::string_view toml_text, const std::string& source_name);

// The effective config as TOML, loadable again by load_toml.
std::string to_toml(const config&);

// Throws config_error naming the setting (flag and file key) and the accepted values.
void validate(const config&);

}  // namespace culvert::supervisor
