// Command-line parsing for the culvert CLI (CLI11 subcommands `http` and `tcp`).
#include "client/client_options.hpp"

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <sstream>

#include "client/clear_text.hpp"
#include "shared/net/address.hpp"
#include "shared/util/secrets.hpp"

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

namespace {
// A token file holds the token on its first line; the line end is not part of it.
std::string first_line(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}
}  // namespace

client_parse_result parse_client_arguments(int argc, const char* const* argv) {
  client_options options;
  options.state_dir = default_state_dir();
  std::string local;
  std::string token_flag;
  std::string token_path;
  bool no_state = false;
  bool tls_on = false, tls_off = false;
  std::int64_t idle_seconds = options.stream_idle_timeout.count();

  CLI::App app{
      "culvert: expose a local service through a culvert server.\n"
      "  culvert http 3000                 share http://127.0.0.1:3000\n"
      "  culvert tcp 127.0.0.1:5432        share a raw TCP service"};
  app.set_version_flag("--version", "culvert " CULVERT_VERSION);
  app.require_subcommand(1);
  auto add_common = [&](CLI::App* sub) {
    sub->add_option("local", local, "local service: PORT or HOST:PORT (host defaults to 127.0.0.1)")
        ->required();
    sub->add_option("--server,-s", options.server,
                    "culvert server's control address HOST:PORT (default 127.0.0.1:7835)")
        ->envname("CULVERT_SERVER");
    auto* token_file =
        sub->add_option("--token-file", token_path,
                        "read the access token from FILE (its first line; mode 600, owned by "
                        "you or root), if the server requires one; default $CULVERT_TOKEN");
    sub->add_option("--token,-t", token_flag,
                    "access token on the command line, 16-255 bytes (every account on this "
                    "machine can read a command line: prefer --token-file or $CULVERT_TOKEN)")
        ->excludes(token_file);
    sub->add_option("--subdomain", options.subdomain,
                    "ask for this name under the server's base domain (default: generated)");
    sub->add_option("--state-dir", options.state_dir,
                    "where the reclaim secret is kept so a restart gets the same address back "
                    "(default $CULVERT_STATE_DIR, $XDG_STATE_HOME/culvert or "
                    "~/.local/state/culvert)");
    sub->add_flag("--no-state", no_state, "do not read or write a state file");
    auto* tls = sub->add_flag("--tls", tls_on,
                              "encrypt the connection to the server with TLS 1.3 (default: on, "
                              "except for a server whose every address is loopback)");
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
                    "connection; visitors beyond them wait their turn (default 256)")
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
  if (options.subdomain.size() > 63) {
    result.exit_code = exit_usage;
    result.output = "culvert: --subdomain is limited to 63 bytes\n";
    return result;
  }
  std::string token_source;
  try {
    auto* chosen = tcp->parsed() ? tcp : http;
    if (chosen->get_option("--token")->count() > 0) {
      options.token = token_flag;
      token_source = "--token";
      result.warnings.push_back(
          "--token puts the token on the command line, where every account on this machine can "
          "read it (ps, /proc/PID/cmdline); use --token-file FILE or $CULVERT_TOKEN");
    } else if (!token_path.empty()) {
      options.token = first_line(shared::util::read_secret_file("token file", token_path, 4096));
      token_source = "the token file";
    } else if (const char* env = std::getenv("CULVERT_TOKEN"); env && *env) {
      options.token = env;
      token_source = "$CULVERT_TOKEN";
    }
  } catch (const shared::util::secret_file_error& e) {
    result.exit_code = exit_usage;
    result.output = std::string("culvert: ") + e.what() + "\n";
    return result;
  }
  if (!token_source.empty())
    if (auto why = shared::util::check_token_length(options.token)) {
      result.exit_code = exit_usage;
      result.output = "culvert: the token from " + token_source + " " + *why + "\n";
      return result;
    }
  if (no_state) options.state_dir.clear();
  options.stream_idle_timeout = std::chrono::seconds(idle_seconds);
  const auto server = shared::net::parse_host_port(options.server);
  if (tls_off && (options.insecure || !options.ca_file.empty())) {
    result.exit_code = exit_usage;
    result.output = "culvert: --no-tls cannot be combined with --ca or --insecure\n";
    return result;
  }
  const bool explicit_choice = tls_on || tls_off || options.insecure || !options.ca_file.empty();
  options.tls = explicit_choice ? !tls_off : !stays_on_this_machine(server->host);
  options.clear_needs_loopback = !explicit_choice && !options.tls;
  result.options = std::move(options);
  return result;
}

}  // namespace culvert::client
