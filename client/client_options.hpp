// The client's command line: `culvert http [HOST:]PORT` and `culvert tcp HOST:PORT` with the
// server, token, subdomain and state-file settings. Runs in the culvert CLI.
// Invariant: a token that left the parser is empty (none) or 16-255 bytes, from a file others
// cannot read, the environment, or (with a warning) the command line.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "shared/protocol/messages.hpp"

namespace culvert::client {

struct client_options {
  shared::protocol::tunnel_kind kind = shared::protocol::tunnel_kind::http;
  std::string local_host = "127.0.0.1";
  std::uint16_t local_port = 0;
  std::string server = "127.0.0.1:7835";
  // Empty (no token) or 16-255 bytes, from --token-file, $CULVERT_TOKEN or --token.
  std::string token;
  std::string subdomain;
  std::string state_dir;  // where reclaim secrets live; empty = no state file
  std::string log_level = "info";
  std::chrono::seconds connect_timeout{10};
  // TLS to the server: on unless the server is on this machine (a loopback address, or a name
  // whose every address is loopback), where clear text is the demo's default; --tls / --no-tls
  // decide explicitly.
  bool tls = false;
  // Clear text chosen by default for a loopback server: every connection must then reach a
  // loopback address (a name resolved again later could point elsewhere).
  bool clear_needs_loopback = false;
  std::string ca_file;    // trust this CA instead of the system store
  bool insecure = false;  // do not verify the server's certificate (development only)
  // Limits on what visitors can make this process hold (docs/security.md, Limits and timeouts).
  std::chrono::seconds stream_idle_timeout{600};  // no byte either way: the stream is reset
  std::size_t buffer_budget_mb = 128;             // relay buffers of all streams together
  std::size_t max_dials = 256;                    // per data connection: local connects at once

  std::string local_address() const;  // "host:port" as dialled
};

struct client_parse_result {
  std::optional<client_options> options;  // set when the client should run
  int exit_code = 0;                      // otherwise: 0 for --help/--version, 1 for bad usage
  std::string output;
  std::vector<std::string> warnings;  // with options: for stderr before the client starts
};

// Exit codes of the culvert CLI (also in README.md).
inline constexpr int exit_ok = 0;
inline constexpr int exit_usage = 1;
inline constexpr int exit_refused = 2;      // the server sent an ERROR during the handshake
inline constexpr int exit_unreachable = 3;  // the server could not be reached at start

client_parse_result parse_client_arguments(int argc, const char* const* argv);

// $CULVERT_STATE_DIR, else $XDG_STATE_HOME/culvert, else ~/.local/state/culvert.
std::string default_state_dir();

}  // namespace culvert::client
