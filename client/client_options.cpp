// Command-line parsing for the culvert CLI (CLI11 subcommands `http` and `tcp`).
#include "client/client_options.hpp"

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <sstream>

#include "shared/net/address.hpp"

namespace culvert::client {

std::string client_options::local_address() const {
  if (local_host.find(':') != std::string::npos)
    return "[" + local_host + "]:" + std::to_string(local_port);
  return local_host + ":" + std::to_string(local_port);
}

std::string default_state_dir() {
  if (const char* dir = std::getenv("CULVERT_STATE_DIR"); dir && *dir) return dir;
  if (const char* xdg = std::getenv("XDG_STATE_HOME"); xdg && *xdg)
    return std::string(xdg) + "/culvert";
  if (const char* home = std::getenv("HOME"); home && *home)
    return std::string(home) + "/.local/state/culvert";
  return "";
}

client_parse_result parse_client_arguments(int argc, const char* const* argv) {
  client_options options;
  options.state_dir = default_state_dir();
  std::string local;
  bool no_state = false;
  bool tls_on = false, tls_off = false;
  std::int64_t idle_seconds = options.stream_idle_timeout.count();

  CLI::App app{
      "culvert: expose a local service through a culvert server.\n"
      "  culvert http 3000                 share http://127.0.0.1:3000\n"
      "  culvert tcp 127.0.0.1:5432        share a raw TCP service"};
  app.set_version_flag("--version", "culvert 0.1.0");
  app.require_subcommand(1);
  auto add_common = [&](CLI::App* sub) {
    sub->add_option("local", local, "local service: PORT or HOST:PORT (host defaults to 127.0.0.1)")
        ->required();
    sub->add_option("--server,-s", options.server,
                    "culvert server's control address HOST:PORT (default 127.0.0.1:7835)")
        ->envname("CULVERT_SERVER");
    sub->add_option("--token,-t", options.token, "access token, if the server requires one")
        ->envname("CULVERT_TOKEN");
    sub->add_option("--subdomain", options.subdomain,
                    "ask for this name under the server's base domain (default: generated)");
    sub->add_option("--state-dir", options.state_dir,
                    "where the reclaim secret is kept so a restart gets the same address back "
                    "(default $CULVERT_STATE_DIR, $XDG_STATE_HOME/culvert or "
                    "~/.local/state/culvert)");
    sub->add_flag("--no-state", no_state, "do not read or write a state file");
    auto* tls = sub->add_flag("--tls", tls_on,
                              "encrypt the connection to the server with TLS 1.3 (default: on, "
                              "except for a server on this machine's loopback)");
    sub->add_flag("--no-tls", tls_off, "talk to the server in clear text")->excludes(tls);
    sub->add_option("--ca", options.ca_file,
                    "verify the server's certificate against this CA file (PEM) instead of the "
                    "system's store; implies --tls");
    sub->add_flag("--insecure", options.insecure,
                  "do not verify the server's certificate (self-signed development servers "
                  "only: anyone on the path could read and change the traffic); implies --tls");
    sub->add_option("--stream-idle-timeout", idle_seconds,
                    "reset a visitor's stream after this many seconds with no byte either way "
                    "(default 600; 0 = never)")
        ->check(CLI::Range(0, 31'536'000));
    sub->add_option("--buffer-budget-mb", options.buffer_budget_mb,
                    "relay buffers of all streams together; past it, new visitors are refused "
                    "and busy streams slow down (default 128)")
        ->check(CLI::Range(1, 1 << 20));
    sub->add_option("--max-dials", options.max_dials,
                    "connections to the local service being opened at once, per data "
                    "connection; visitors beyond them are reset (default 256)")
        ->check(CLI::Range(1, 1 << 20));
    sub->add_option("--log-level", options.log_level,
                    "diagnostics on stderr: trace debug info warn error (default info)");
  };
  auto* http = app.add_subcommand("http", "expose a local HTTP service, logging each request");
  auto* tcp = app.add_subcommand("tcp", "expose a local TCP service (databases, ssh, ...)");
  add_common(http);
  add_common(tcp);

  client_parse_result result;
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::ostringstream out, err;
    result.exit_code = app.exit(e, out, err) == 0 ? exit_ok : exit_usage;
    result.output = out.str() + err.str();
    return result;
  }
  options.kind =
      tcp->parsed() ? shared::protocol::tunnel_kind::tcp : shared::protocol::tunnel_kind::http;
  auto where = shared::net::parse_host_port(local, "127.0.0.1");
  if (!where || where->port == 0) {
    result.exit_code = exit_usage;
    result.output = "culvert: '" + local + "' is not a PORT or HOST:PORT\n";
    return result;
  }
  options.local_host = where->host;
  options.local_port = where->port;
  if (!shared::net::parse_host_port(options.server)) {
    result.exit_code = exit_usage;
    result.output = "culvert: --server '" + options.server + "' is not HOST:PORT\n";
    return result;
  }
  if (options.token.size() > 255 || options.subdomain.size() > 63) {
    result.exit_code = exit_usage;
    result.output = "culvert: --token is limited to 255 bytes and --subdomain to 63\n";
    return result;
  }
  if (no_state) options.state_dir.clear();
  options.stream_idle_timeout = std::chrono::seconds(idle_seconds);
  const auto server = shared::net::parse_host_port(options.server);
  const bool loopback_server = shared::net::is_loopback_host(server->host);
  if (tls_off && (options.insecure || !options.ca_file.empty())) {
    result.exit_code = exit_usage;
    result.output = "culvert: --no-tls cannot be combined with --ca or --insecure\n";
    return result;
  }
  options.tls =
      tls_on || (!tls_off && (!loopback_server || options.insecure || !options.ca_file.empty()));
  result.options = std::move(options);
  return result;
}

}  // namespace culvert::client
