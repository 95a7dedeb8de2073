// The supervisor's configuration (see config.hpp): one table of settings drives the flags, the
// TOML keys, --print-config and the checks, so the four never disagree. Runs in the supervisor.
// Invariant: every check is a pure function of one value (or, in validate(), of the whole config);
// nothing here touches the network or the filesystem except reading the --config file (whose
// permissions are checked like a tokens file's when it sets tokens).
// Over 500 lines on purpose: the settings table and the flag, TOML and print code that walk it
// are one duty, and splitting them would put a setting's name, check and help in separate files.
#include "supervisor/config.hpp"

#include <sys/stat.h>
#include <toml++/toml.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <boost/asio/ip/address.hpp>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <memory>

#include "shared/net/address.hpp"
#include "shared/util/secrets.hpp"
#include "supervisor/domain_pool.hpp"

#ifndef CULVERT_VERSION
#error "CULVERT_VERSION comes from project(VERSION) in CMakeLists.txt"
#endif

namespace culvert::supervisor {

namespace {

using reason = std::optional<std::string>;

constexpr std::string_view program = "culvert-supervisor";
constexpr std::string_view log_levels[] = {"trace", "debug", "info", "warn", "error"};

// A value quoted for an error message: the operator sees exactly what was refused, minus bytes
// that would garble the terminal.
std::string shown(std::string_view value) {
  std::string out = "'";
  for (char c : value.substr(0, 80)) out += (c >= ' ' && c < 0x7f) ? c : '?';
  if (value.size() > 80) out += "...";
  return out + "'";
}

bool is_ip_address(std::string_view text) {
  boost::system::error_code ec;
  boost::asio::ip::make_address(std::string(text), ec);
  return !ec;
}

reason check_control(std::string_view text) {
  const std::string refused =
      "must be IP:PORT or [IPv6]:PORT (port 0 = any), such as 127.0.0.1:7835, got " + shown(text);
  const auto parsed = shared::net::parse_host_port(text);
  // The supervisor binds this address: a name could resolve to several, or to none at start-up.
  if (!parsed || !is_ip_address(parsed->host)) return refused;
  const bool bracketed = text.front() == '[';
  if (bracketed != boost::asio::ip::make_address(parsed->host).is_v6()) return refused;
  return std::nullopt;
}

reason check_public_bind(std::string_view text) {
  if (!is_ip_address(text))
    return "must be an IP address such as 127.0.0.1 or ::, got " + shown(text);
  return std::nullopt;
}

reason check_public_host(std::string_view text) {
  if (text.empty() || is_ip_address(text)) return std::nullopt;
  const bool name_chars = std::all_of(text.begin(), text.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
  });
  if (!name_chars || text.size() > 253 || text.front() == '.' || text.front() == '-')
    return "must be a host name or an IP address, got " + shown(text);
  return std::nullopt;
}

reason check_base_domain(std::string_view text) {
  if (auto why = domain_pool::check_base_domain(text)) return *why + ", got " + shown(text);
  return std::nullopt;
}

// "MIN-MAX", digits only.
std::optional<std::pair<std::uint16_t, std::uint16_t>> parse_ports(std::string_view text) {
  const auto dash = text.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  auto number = [](std::string_view s) -> std::optional<std::uint16_t> {
    unsigned value = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (s.empty() || ec != std::errc{} || end != s.data() + s.size() || value > 65535)
      return std::nullopt;
    return static_cast<std::uint16_t>(value);
  };
  const auto min = number(text.substr(0, dash));
  const auto max = number(text.substr(dash + 1));
  if (!min || !max) return std::nullopt;
  return std::pair{*min, *max};
}

reason check_ports(std::string_view text) {
  const auto range = parse_ports(text);
  if (!range || range->first < 1 || range->first > range->second)
    return "must be MIN-MAX with 1 <= MIN <= MAX <= 65535, such as 20000-20999, got " + shown(text);
  return std::nullopt;
}

reason check_instance(std::string_view text) {
  const bool ok = !text.empty() && text.size() <= limits::max_instance_chars &&
                  std::all_of(text.begin(), text.end(), [](char c) {
                    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                           (c >= '0' && c <= '9') || c == '_' || c == '-';
                  });
  if (!ok) return "must be 1-32 characters of A-Z, a-z, 0-9, '_' and '-', got " + shown(text);
  return std::nullopt;
}

// Strict UTF-8 (no overlong forms, surrogates or code points above U+10FFFF), as TOML requires.
bool is_utf8(std::string_view text) {
  for (std::size_t i = 0; i < text.size();) {
    const auto b = static_cast<unsigned char>(text[i]);
    std::size_t n = 0;  // the sequence's length, from its lead byte
    if (b < 0x80)
      n = 1;
    else if ((b & 0xE0) == 0xC0)
      n = 2;
    else if ((b & 0xF0) == 0xE0)
      n = 3;
    else if ((b & 0xF8) == 0xF0)
      n = 4;
    if (n == 0 || text.size() - i < n) return false;
    std::uint32_t cp = n == 1 ? b : b & (0x7F >> n);
    for (std::size_t k = 1; k < n; ++k) {
      const auto c = static_cast<unsigned char>(text[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = cp << 6 | (c & 0x3F);
    }
    constexpr std::uint32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < smallest[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

// Any file path: the worker, the tokens file, the TLS certificate and key.
reason check_path(std::string_view text) {
  // exec() and open() would silently cut the path at the NUL and use something else.
  if (text.find('\0') != std::string_view::npos) return "must not contain a NUL character";
  // Flags could carry any bytes, but --print-config's TOML must load again with --config.
  if (!is_utf8(text)) return "must be valid UTF-8, got " + shown(text);
  return std::nullopt;
}

// A POSIX portable user name (the getpwnam lookup itself happens at start, and only as root).
reason check_user(std::string_view text) {
  const bool ok = !text.empty() && text.size() <= limits::max_user_chars && text.front() != '-' &&
                  std::all_of(text.begin(), text.end(), [](char c) {
                    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                           (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
                  });
  if (!ok)
    return "must be a user name of 1-32 characters of A-Z, a-z, 0-9, '.', '_' and '-' (not "
           "starting with '-'), got " +
           shown(text);
  return std::nullopt;
}

reason check_log_level(std::string_view text) {
  if (std::find(std::begin(log_levels), std::end(log_levels), text) == std::end(log_levels))
    return "must be one of trace, debug, info, warn, error, got " + shown(text);
  return std::nullopt;
}

// Tokens are secrets: messages give their position and size, never their bytes.
reason check_token(std::string_view token) {
  if (auto why = shared::util::check_token_length(token)) return why;
  if (!is_utf8(token)) return "must be valid UTF-8";  // a TOML file can hold nothing else
  return std::nullopt;
}

enum class value_kind { text, number, text_list };

struct setting {
  std::string_view key;         // in [server]
  std::string_view flag;        // the key with '-' for '_' (but --token fills tokens)
  std::string_view value_name;  // in --help
  std::string_view help;        // --help text, without the default
  value_kind kind = value_kind::text;
  // text
  std::string (*get_text)(const config&) = nullptr;
  void (*set_text)(config&, std::string_view) = nullptr;  // only after check_text accepted it
  reason (*check_text)(std::string_view) = nullptr;
  std::string_view empty_means = {};  // what "" stands for, in --help
  // number
  std::int64_t (*get_number)(const config&) = nullptr;
  void (*set_number)(config&, std::int64_t) = nullptr;  // only within [min, max]
  std::int64_t min = 0, max = 0;
};

reason check_number(const setting& s, std::int64_t value) {
  if (value < s.min || value > s.max)
    return "must be between " + std::to_string(s.min) + " and " + std::to_string(s.max) + ", got " +
           std::to_string(value);
  return std::nullopt;
}

// The size is deduced, so adding a setting is one entry and nothing else.
const auto& settings() {
  static const auto table = std::to_array<setting>({
      {.key = "control",
       .flag = "--control",
       .value_name = "HOST:PORT",
       .help = "Address for control and data connections from clients (port 0 = any)",
       .get_text = [](const config& c) { return c.control_address; },
       .set_text = [](config& c, std::string_view v) { c.control_address = v; },
       .check_text = check_control},
      {.key = "public_bind",
       .flag = "--public-bind",
       .value_name = "ADDR",
       .help = "IP address the tunnels' public listeners bind",
       .get_text = [](const config& c) { return c.public_bind; },
       .set_text = [](config& c, std::string_view v) { c.public_bind = v; },
       .check_text = check_public_bind},
      {.key = "public_host",
       .flag = "--public-host",
       .value_name = "NAME",
       .help = "Host shown in the tcp:// URLs given to clients",
       .get_text = [](const config& c) { return c.public_host; },
       .set_text = [](config& c, std::string_view v) { c.public_host = v; },
       .check_text = check_public_host,
       .empty_means = "the --public-bind address"},
      {.key = "base_domain",
       .flag = "--base-domain",
       .value_name = "NAME",
       .help = "Tunnels get <label>.<base-domain> (lowercase DNS name)",
       .get_text = [](const config& c) { return c.base_domain; },
       .set_text = [](config& c, std::string_view v) { c.base_domain = v; },
       .check_text = check_base_domain},
      {.key = "ports",
       .flag = "--ports",
       .value_name = "MIN-MAX",
       .help = "Range of public TCP ports handed to tunnels",
       .get_text =
           [](const config& c) {
             return std::to_string(c.port_min) + "-" + std::to_string(c.port_max);
           },
       .set_text =
           [](config& c, std::string_view v) {
             const auto range = parse_ports(v);
             c.port_min = range->first;
             c.port_max = range->second;
           },
       .check_text = check_ports},
      {.key = "tokens",
       .flag = "--token",
       .value_name = "TOKEN",
       .help = "Token a client must present, 16-255 bytes; may be repeated and replaces the file's "
               "list. Every account can read a command line: prefer --tokens-file (a --config "
               "file that sets tokens must be mode 600 like it)",
       .kind = value_kind::text_list,
       .empty_means = "none, any client is accepted"},
      {.key = "tokens_file",
       .flag = "--tokens-file",
       .value_name = "FILE",
       .help = "TOML file of [[token]] entries, each with its own limits (mode 600); not with "
               "--token",
       .get_text = [](const config& c) { return c.tokens_file; },
       .set_text = [](config& c, std::string_view v) { c.tokens_file = v; },
       .check_text = check_path,  // any path without a NUL; it is read at start
       .empty_means = "none"},
      {.key = "max_tunnels",
       .flag = "--max-tunnels",
       .value_name = "N",
       .help = "Most tunnels at once (one shared-memory slot each)",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.max_tunnels; },
       .set_number = [](config& c, std::int64_t v) { c.max_tunnels = std::uint32_t(v); },
       .min = 1,
       .max = limits::max_tunnels},
      {.key = "grace_period",
       .flag = "--grace-period",
       .value_name = "SECONDS",
       .help = "How long a lost client's domain and port are held for it to reconnect",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.grace_period.count(); },
       .set_number = [](config& c, std::int64_t v) { c.grace_period = std::chrono::seconds(v); },
       .min = 0,
       .max = limits::max_seconds},
      {.key = "heartbeat_interval",
       .flag = "--heartbeat-interval",
       .value_name = "SECONDS",
       .help = "Interval between heartbeats on the control connection",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.heartbeat_interval.count(); },
       .set_number = [](config& c,
                        std::int64_t v) { c.heartbeat_interval = std::chrono::seconds(v); },
       .min = 1,
       .max = limits::max_heartbeat_interval},
      {.key = "heartbeat_timeout",
       .flag = "--heartbeat-timeout",
       .value_name = "SECONDS",
       .help = "Silence after which a client counts as lost (more than --heartbeat-interval)",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.heartbeat_timeout.count(); },
       .set_number = [](config& c,
                        std::int64_t v) { c.heartbeat_timeout = std::chrono::seconds(v); },
       .min = 1,  // validate() requires more than heartbeat_interval
       .max = limits::max_seconds},
      {.key = "handshake_timeout",
       .flag = "--handshake-timeout",
       .value_name = "SECONDS",
       .help = "Time a new connection has to complete its handshake",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.handshake_timeout.count(); },
       .set_number = [](config& c,
                        std::int64_t v) { c.handshake_timeout = std::chrono::seconds(v); },
       .min = 1,
       .max = limits::max_seconds},
      {.key = "max_pending_handshakes",
       .flag = "--max-pending-handshakes",
       .value_name = "N",
       .help = "Most connections waiting for their first frame, and most opening new tunnels; "
               "a full stage closes its oldest connection to admit a new one",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.max_pending_handshakes; },
       .set_number = [](config& c, std::int64_t v) { c.max_pending_handshakes = std::uint32_t(v); },
       .min = 1,
       .max = limits::max_pending_handshakes},
      {.key = "max_pending_reclaims",
       .flag = "--max-pending-reclaims",
       .value_name = "N",
       .help = "Most handshakes at once of clients that proved a live tunnel's id and secret "
               "(reclaims after a reconnect); their own budget, apart from new tunnels",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.max_pending_reclaims; },
       .set_number = [](config& c, std::int64_t v) { c.max_pending_reclaims = std::uint32_t(v); },
       .min = 1,
       .max = limits::max_pending_handshakes},
      {.key = "max_tunnels_per_token",
       .flag = "--max-tunnels-per-token",
       .value_name = "N",
       .help = "Most tunnels at once per token (a tokens file entry may set its own max_tunnels)",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.max_tunnels_per_token; },
       .set_number = [](config& c, std::int64_t v) { c.max_tunnels_per_token = std::uint32_t(v); },
       .min = 1,
       .max = limits::max_tunnels},
      {.key = "max_tunnels_per_address",
       .flag = "--max-tunnels-per-address",
       .value_name = "N",
       .help = "Most tunnels at once per client IPv4 address or IPv6 /56",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.max_tunnels_per_address; },
       .set_number = [](config& c,
                        std::int64_t v) { c.max_tunnels_per_address = std::uint32_t(v); },
       .min = 1,
       .max = limits::max_tunnels},
      {.key = "max_handshakes_per_address",
       .flag = "--max-handshakes-per-address",
       .value_name = "N",
       .help = "Most connections in the handshake at once per IPv4 address or IPv6 /56",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.max_handshakes_per_address; },
       .set_number = [](config& c,
                        std::int64_t v) { c.max_handshakes_per_address = std::uint32_t(v); },
       .min = 1,
       .max = limits::max_pending_handshakes},
      {.key = "auth_failure_delay_ms",
       .flag = "--auth-failure-delay-ms",
       .value_name = "MS",
       .help = "Wait before refusing a bad token, doubled per recent failure from the same "
               "address up to 30 s (0 = no wait)",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.auth_failure_delay.count(); },
       .set_number = [](config& c,
                        std::int64_t v) { c.auth_failure_delay = std::chrono::milliseconds(v); },
       .min = 0,
       .max = limits::max_auth_failure_delay_ms},
      {.key = "max_visitors",
       .flag = "--max-visitors",
       .value_name = "N",
       .help = "Most visitor connections open at once per tunnel (its worker resets more); "
               "at most the descriptor limit minus 64",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.max_visitors; },
       .set_number = [](config& c, std::int64_t v) { c.max_visitors = std::uint32_t(v); },
       .min = 1,
       .max = limits::max_visitors},
      {.key = "max_visitors_per_source",
       .flag = "--max-visitors-per-source",
       .value_name = "N",
       .help = "Most visitor connections open at once per tunnel from one IPv4 address or IPv6 /64 "
               "(its worker resets more)",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.max_visitors_per_source; },
       .set_number = [](config& c,
                        std::int64_t v) { c.max_visitors_per_source = std::uint32_t(v); },
       .min = 1,
       .max = limits::max_visitors},
      {.key = "stream_idle_timeout",
       .flag = "--stream-idle-timeout",
       .value_name = "SECONDS",
       .help = "Reset a visitor's stream after this long with no byte either way (0 = never)",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.stream_idle_timeout.count(); },
       .set_number = [](config& c,
                        std::int64_t v) { c.stream_idle_timeout = std::chrono::seconds(v); },
       .min = 0,
       .max = limits::max_seconds},
      {.key = "buffer_budget_mb",
       .flag = "--buffer-budget-mb",
       .value_name = "MB",
       .help = "Relay buffers a worker may hold for all its streams; past it, new visitors are "
               "reset and busy streams slow down",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.buffer_budget_mb; },
       .set_number = [](config& c, std::int64_t v) { c.buffer_budget_mb = std::uint32_t(v); },
       .min = 1,
       .max = limits::max_buffer_budget_mb},
      {.key = "data_connections",
       .flag = "--data-connections",
       .value_name = "N",
       .help = "Data connections each client opens",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.data_connections; },
       .set_number = [](config& c, std::int64_t v) { c.data_connections = std::uint8_t(v); },
       .min = 1,
       .max = limits::max_data_connections},
      {.key = "tls_cert",
       .flag = "--tls-cert",
       .value_name = "FILE",
       .help = "TLS certificate chain (PEM) for control connections; with --tls-key, clients "
               "must use TLS 1.3",
       .get_text = [](const config& c) { return c.tls_cert; },
       .set_text = [](config& c, std::string_view v) { c.tls_cert = v; },
       .check_text = check_path,
       .empty_means = "none, clear text"},
      {.key = "tls_key",
       .flag = "--tls-key",
       .value_name = "FILE",
       .help = "Private key (PEM) of --tls-cert; read once at start, before dropping privileges",
       .get_text = [](const config& c) { return c.tls_key; },
       .set_text = [](config& c, std::string_view v) { c.tls_key = v; },
       .check_text = check_path,
       .empty_means = "none"},
      {.key = "instance",
       .flag = "--instance",
       .value_name = "NAME",
       .help = "Instance name; the shared-memory table is /culvert-<instance>",
       .get_text = [](const config& c) { return c.instance; },
       .set_text = [](config& c, std::string_view v) { c.instance = v; },
       .check_text = check_instance},
      {.key = "worker",
       .flag = "--worker",
       .value_name = "PATH",
       .help = "Worker executable",
       .get_text = [](const config& c) { return c.worker_path; },
       .set_text = [](config& c, std::string_view v) { c.worker_path = v; },
       .check_text = check_path,
       .empty_means = "culvert-worker (with --tls-cert, else culvert-worker-clear) beside it"},
      {.key = "user",
       .flag = "--user",
       .value_name = "NAME",
       .help = "Unprivileged account the workers run as and the supervisor drops to after "
               "binding, when started as root (ignored otherwise)",
       .get_text = [](const config& c) { return c.user; },
       .set_text = [](config& c, std::string_view v) { c.user = v; },
       .check_text = check_user},
      {.key = "worker_uid_base",
       .flag = "--worker-uid-base",
       .value_name = "UID",
       .help = "Started as root, run each worker as uid and gid UID + its slot (0: every worker "
               "as --user); the range must be free of accounts and groups",
       .kind = value_kind::number,
       .get_number = [](const config& c) -> std::int64_t { return c.worker_uid_base; },
       .set_number = [](config& c, std::int64_t v) { c.worker_uid_base = std::uint32_t(v); },
       .min = 0,
       .max = limits::max_worker_uid},
      {.key = "log_level",
       .flag = "--log-level",
       .value_name = "LEVEL",
       .help = "Log level: trace, debug, info, warn or error",
       .get_text = [](const config& c) { return c.log_level; },
       .set_text = [](config& c, std::string_view v) { c.log_level = v; },
       .check_text = check_log_level},
  });
  return table;
}

std::string name_of(const setting& s) {
  return std::string(s.key) + " (" + std::string(s.flag) + ")";
}

std::string default_of(const setting& s) {
  const config defaults;
  std::string value;
  if (s.kind == value_kind::number) value = std::to_string(s.get_number(defaults));
  if (s.kind == value_kind::text) value = s.get_text(defaults);
  return value.empty() ? std::string(s.empty_means) : value;
}

// A TOML basic string: quotes, backslashes and control characters escaped, the rest verbatim.
std::string toml_quote(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if ((c >= 0 && c < ' ') || c == 0x7f) {  // bytes >= 0x80 (UTF-8) go verbatim
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04X", static_cast<unsigned>(c));
      out += escaped;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string at(const std::string& source, const toml::source_region& where) {
  return source + ": line " + std::to_string(where.begin.line) + ": ";
}

std::string_view type_name(toml::node_type type) {
  switch (type) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a floating-point number";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
    case toml::node_type::time:
    case toml::node_type::date_time:
      return "a date or time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

const setting* find_key(std::string_view key) {
  for (const setting& s : settings())
    if (s.key == key) return &s;
  return nullptr;
}

void load_value(config& cfg, const setting& s, const toml::node& node, const std::string& source) {
  const std::string where = at(source, node.source()) + std::string(s.key);
  switch (s.kind) {
    case value_kind::text: {
      const auto* value = node.as_string();
      if (!value)
        throw config_error(where + " must be a string, got " + std::string(type_name(node.type())));
      if (auto why = s.check_text(value->get())) throw config_error(where + " " + *why);
      s.set_text(cfg, value->get());
      return;
    }
    case value_kind::number: {
      const auto* value = node.as_integer();
      if (!value)
        throw config_error(where + " must be an integer, got " +
                           std::string(type_name(node.type())));
      if (auto why = check_number(s, value->get())) throw config_error(where + " " + *why);
      s.set_number(cfg, value->get());
      return;
    }
    case value_kind::text_list: {  // tokens, the only list
      const auto* list = node.as_array();
      if (!list)
        throw config_error(where + " must be an array of strings, got " +
                           std::string(type_name(node.type())));
      std::vector<std::string> tokens;
      for (std::size_t i = 0; i < list->size(); ++i) {
        const toml::node& item = *list->get(i);
        const std::string item_where =
            at(source, item.source()) + std::string(s.key) + "[" + std::to_string(i) + "]";
        const auto* value = item.as_string();
        if (!value)
          throw config_error(item_where + " must be a string, got " +
                             std::string(type_name(item.type())));
        if (auto why = check_token(value->get())) throw config_error(item_where + " " + *why);
        tokens.push_back(value->get());
      }
      cfg.tokens = std::move(tokens);
      return;
    }
  }
}

// The file's text and the status of the descriptor it was read from: a file that sets tokens
// must pass the same permission check as a tokens file (done once its content is known).
struct config_file {
  std::string text;
  struct stat status {};
};

config_file read_file(const std::string& path) {
  constexpr std::size_t max_bytes = 1 << 20;  // a config file is a few hundred bytes
  struct closer {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  const std::unique_ptr<std::FILE, closer> file(std::fopen(path.c_str(), "rbe"));
  if (!file)
    throw config_error("cannot open config file " + shown(path) +
                       ": fopen: " + std::strerror(errno));
  config_file out;
  if (::fstat(::fileno(file.get()), &out.status) != 0)
    throw config_error("cannot check config file " + shown(path) +
                       ": fstat: " + std::strerror(errno));
  char buffer[4096];
  while (const std::size_t n = std::fread(buffer, 1, sizeof buffer, file.get())) {
    out.text.append(buffer, n);
    if (out.text.size() > max_bytes)
      throw config_error("config file " + shown(path) + " is larger than 1 MiB");
  }
  if (std::ferror(file.get()))
    throw config_error("cannot read config file " + shown(path) +
                       ": fread: " + std::strerror(errno));
  return out;
}

std::optional<std::int64_t> parse_integer(std::string_view text) {
  std::int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return value;
}

parse_result failure(std::string_view message) {
  return {std::nullopt,
          2,
          std::string(program) + ": " + std::string(message) + "\nRun '" + std::string(program) +
              " --help' for the list of options.\n",
          {}};
}

}  // namespace

std::string_view version() {
  return CULVERT_VERSION;
}

config load_toml(std::string_view toml_text, const std::string& source_name) {
  toml::table root;
  try {
    root = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& e) {
    throw config_error(at(source_name, e.source()) + std::string(e.description()));
  }
  config cfg;
  for (auto&& [key, node] : root) {
    const std::string name(key.str());
    if (name != "server")
      throw config_error(
          at(source_name, key.source()) +
          (node.is_table() ? "unknown table [" + name + "]"
                           : "unknown key '" + name + "' (settings belong in the [server] table)"));
    const auto* server = node.as_table();
    if (!server)
      throw config_error(at(source_name, node.source()) + "server must be a table, got " +
                         std::string(type_name(node.type())));
    for (auto&& [server_key, value] : *server) {
      const setting* s = find_key(server_key.str());
      if (!s)
        throw config_error(at(source_name, server_key.source()) + "unknown key 'server." +
                           std::string(server_key.str()) + "'");
      load_value(cfg, *s, value, source_name);
    }
  }
  return cfg;
}

std::string to_toml(const config& cfg) {
  std::string out = "# culvert-supervisor " + std::string(version()) +
                    ": effective configuration (--print-config); usable with --config.\n"
                    "[server]\n";
  for (const setting& s : settings()) {
    out += "# " + std::string(s.help) + "\n" + std::string(s.key) + " = ";
    switch (s.kind) {
      case value_kind::text:
        out += toml_quote(s.get_text(cfg));
        break;
      case value_kind::number:
        out += std::to_string(s.get_number(cfg));
        break;
      case value_kind::text_list: {
        out += "[";
        for (std::size_t i = 0; i < cfg.tokens.size(); ++i)
          out += (i ? ", " : "") + toml_quote(cfg.tokens[i]);
        out += "]";
        break;
      }
    }
    out += "\n";
  }
  return out;
}

void validate(const config& cfg) {
  for (const setting& s : settings()) {
    reason why;
    switch (s.kind) {
      case value_kind::text:
        why = s.check_text(s.get_text(cfg));
        break;
      case value_kind::number:
        why = check_number(s, s.get_number(cfg));
        break;
      case value_kind::text_list:
        for (std::size_t i = 0; i < cfg.tokens.size() && !why; ++i)
          if (auto token_why = check_token(cfg.tokens[i]))
            why = "token " + std::to_string(i + 1) + " " + *token_why;
        break;
    }
    if (why) throw config_error(name_of(s) + " " + *why);
  }
  if (cfg.tls_cert.empty() != cfg.tls_key.empty())
    throw config_error(
        "tls_cert (--tls-cert) and tls_key (--tls-key) go together: give both or "
        "neither");
  // Two sources of tokens would leave it unclear which limits apply to whom.
  if (!cfg.tokens.empty() && !cfg.tokens_file.empty())
    throw config_error(
        "tokens (--token) and tokens_file (--tokens-file) cannot be used together: "
        "put every token in the tokens file");
  if (cfg.worker_uid_base != 0 &&
      (cfg.worker_uid_base < limits::min_worker_uid_base ||
       std::uint64_t(cfg.worker_uid_base) + cfg.max_tunnels - 1 > limits::max_worker_uid))
    throw config_error("worker_uid_base (--worker-uid-base) must be 0 or from " +
                       std::to_string(limits::min_worker_uid_base) + " to " +
                       std::to_string(limits::max_worker_uid - cfg.max_tunnels + 1) +
                       " (one uid per tunnel, max_tunnels " + std::to_string(cfg.max_tunnels) +
                       "), got " + std::to_string(cfg.worker_uid_base));
  if (cfg.heartbeat_timeout <= cfg.heartbeat_interval)
    throw config_error(
        "heartbeat_timeout (--heartbeat-timeout) must be greater than "
        "heartbeat_interval (" +
        std::to_string(cfg.heartbeat_interval.count()) + "), got " +
        std::to_string(cfg.heartbeat_timeout.count()));
}

parse_result parse_arguments(int argc, const char* const* argv) {
  CLI::App app{
      "culvert supervisor: gives each client a domain under the base domain and a "
      "public TCP port, with one worker process per tunnel.",
      std::string(program)};
  app.footer(
      "Configuration file: TOML with a [server] table whose keys are the long flag names with "
      "'_' for '-' (tokens = [\"a\", \"b\"] for --token, ports = \"20000-20999\", durations in "
      "seconds unless the key ends in _ms). Precedence: built-in defaults < --config file < "
      "flags.");
  app.set_help_flag("-h,--help", "Print this help and exit");
  app.set_version_flag("--version", std::string(version()), "Print the version and exit");

  std::string config_path;
  CLI::Option* config_option =
      app.add_option("--config", config_path,
                     "TOML configuration file (default: none, built-in defaults and flags only)")
          ->type_name("FILE");
  // Every flag is read as text and converted here, so flags and file share checks and messages.
  std::vector<std::string> raw(settings().size());
  std::vector<std::string> tokens;
  std::vector<CLI::Option*> options;
  for (std::size_t i = 0; i < settings().size(); ++i) {
    const setting& s = settings()[i];
    const std::string help = std::string(s.help) + " (default: " + default_of(s) + ")";
    CLI::Option* option = s.kind == value_kind::text_list
                              ? app.add_option(std::string(s.flag), tokens, help)
                                    ->expected(1)
                                    ->take_all()
                                    ->allow_extra_args(false)
                              : app.add_option(std::string(s.flag), raw[i], help);
    options.push_back(option->type_name(std::string(s.value_name)));
  }
  bool print_config = false;
  app.add_flag("--print-config", print_config,
               "Print the effective configuration as TOML (usable with --config) and exit");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    return {std::nullopt, 0, app.help(), {}};
  } catch (const CLI::CallForVersion&) {
    return {std::nullopt, 0, std::string(program) + " " + std::string(version()) + "\n", {}};
  } catch (const CLI::ParseError& e) {
    return failure(e.what());
  }

  try {
    config cfg;
    if (config_option->count() > 0) {
      const auto file = read_file(config_path);
      cfg = load_toml(file.text, config_path);
      if (!cfg.tokens.empty())
        if (auto why = shared::util::check_secret_file("config file", config_path, file.status))
          throw config_error(*why + ", or move its tokens to a tokens_file");
    }
    for (std::size_t i = 0; i < settings().size(); ++i) {
      if (options[i]->count() == 0) continue;
      const setting& s = settings()[i];
      const std::string flag(s.flag);
      switch (s.kind) {
        case value_kind::text:
          if (auto why = s.check_text(raw[i])) throw config_error(flag + " " + *why);
          s.set_text(cfg, raw[i]);
          break;
        case value_kind::number: {
          const auto value = parse_integer(raw[i]);
          if (!value) throw config_error(flag + " must be an integer, got " + shown(raw[i]));
          if (auto why = check_number(s, *value)) throw config_error(flag + " " + *why);
          s.set_number(cfg, *value);
          break;
        }
        case value_kind::text_list:
          for (std::size_t t = 0; t < tokens.size(); ++t)
            if (auto why = check_token(tokens[t]))
              throw config_error(flag + " (occurrence " + std::to_string(t + 1) + ") " + *why);
          cfg.tokens = tokens;
          break;
      }
    }
    validate(cfg);
    if (print_config) return {std::nullopt, 0, to_toml(cfg), {}};
    parse_result result{std::move(cfg), 0, {}, {}};
    if (!tokens.empty())
      result.warnings.push_back(
          "--token puts a secret on the command line, where every account on this machine can "
          "read it (ps, /proc/PID/cmdline); use tokens_file (--tokens-file) instead");
    return result;
  } catch (const config_error& e) {
    return failure(e.what());
  }
}

}  // namespace culvert::supervisor
