// Unit tests for the supervisor's configuration: defaults, TOML file, flags, precedence, checks.
// Runs in the unit-test binary; touches only its own temporary files, removed even on failure.
#include "supervisor/config.hpp"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "tests/support/skip.hpp"

namespace {

using namespace culvert::supervisor;
using namespace std::chrono_literals;

parse_result parse(std::vector<std::string> args) {
  args.insert(args.begin(), "culvert-supervisor");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return parse_arguments(static_cast<int>(argv.size()), argv.data());
}

// A config file that removes itself when the test ends, passed or not.
struct temp_file {
  explicit temp_file(const std::string& text)
      : path(std::filesystem::temp_directory_path() /
             ("culvert-config-test-" + std::to_string(::getpid()) + "-" +
              std::to_string(counter++) + ".toml")) {
    std::ofstream(path) << text;
  }
  ~temp_file() { std::filesystem::remove(path); }
  std::filesystem::path path;
  static inline int counter = 0;
};

std::string load_error(const std::string& text) {
  try {
    load_toml(text, "test.toml");
  } catch (const config_error& e) {
    return e.what();
  }
  FAIL("load_toml accepted: " << text);
  return {};
}

std::string validate_error(const std::function<void(config&)>& change) {
  config cfg;
  change(cfg);
  try {
    validate(cfg);
  } catch (const config_error& e) {
    return e.what();
  }
  FAIL("validate accepted the change");
  return {};
}

}  // namespace

TEST_CASE("defaults are the documented ones and valid", "[config]") {
  const config cfg;
  CHECK(cfg.control_address == "127.0.0.1:7835");
  CHECK(cfg.public_bind == "127.0.0.1");
  CHECK(cfg.public_host.empty());
  CHECK(cfg.base_domain == "localhost");
  CHECK(cfg.port_min == 20000);
  CHECK(cfg.port_max == 20999);
  CHECK(cfg.tokens.empty());
  CHECK(cfg.max_tunnels == 1000);
  CHECK(cfg.tokens_file.empty());
  CHECK(cfg.max_tunnels_per_token == 16);
  CHECK(cfg.max_tunnels_per_address == 64);
  CHECK(cfg.max_handshakes_per_address == 16);
  CHECK(cfg.auth_failure_delay == 1000ms);
  CHECK(cfg.grace_period == 30s);
  CHECK(cfg.heartbeat_interval == 5s);
  CHECK(cfg.heartbeat_timeout == 30s);
  CHECK(cfg.handshake_timeout == 5s);
  CHECK(cfg.max_pending_handshakes == 256);
  CHECK(cfg.max_pending_reclaims == 256);
  CHECK(cfg.data_connections == 2);
  CHECK(cfg.instance == "default");
  CHECK(cfg.worker_path.empty());
  CHECK(cfg.log_level == "info");
  CHECK_NOTHROW(validate(cfg));

  const auto result = parse({});
  REQUIRE(result.cfg);
  CHECK(*result.cfg == cfg);
  CHECK(result.exit_code == 0);
  CHECK(result.output.empty());
}

TEST_CASE("load_toml reads every key of [server]", "[config]") {
  const config cfg = load_toml(R"(
# a comment
[server]
control = "[::1]:9000"
public_bind = "0.0.0.0"
public_host = "tunnels.example.com"
base_domain = "t.example.com"
ports = "30000-30100"
tokens = ["alpha-0123456789abcdef", "beta-0123456789abcdef"]
max_tunnels = 50
grace_period = 0
heartbeat_interval = 2
heartbeat_timeout = 7
handshake_timeout = 3
max_pending_handshakes = 10
max_tunnels_per_token = 3
max_tunnels_per_address = 4
max_handshakes_per_address = 5
auth_failure_delay_ms = 250
data_connections = 16
instance = "staging_2"
worker = "/opt/culvert/culvert-worker"
log_level = "debug"
)",
                               "full.toml");
  CHECK(cfg.control_address == "[::1]:9000");
  CHECK(cfg.public_bind == "0.0.0.0");
  CHECK(cfg.public_host == "tunnels.example.com");
  CHECK(cfg.base_domain == "t.example.com");
  CHECK(cfg.port_min == 30000);
  CHECK(cfg.port_max == 30100);
  CHECK(cfg.tokens == std::vector<std::string>{"alpha-0123456789abcdef", "beta-0123456789abcdef"});
  CHECK(cfg.max_tunnels == 50);
  CHECK(cfg.grace_period == 0s);
  CHECK(cfg.heartbeat_interval == 2s);
  CHECK(cfg.heartbeat_timeout == 7s);
  CHECK(cfg.handshake_timeout == 3s);
  CHECK(cfg.max_pending_handshakes == 10);
  CHECK(cfg.max_tunnels_per_token == 3);
  CHECK(cfg.max_tunnels_per_address == 4);
  CHECK(cfg.max_handshakes_per_address == 5);
  CHECK(cfg.auth_failure_delay == 250ms);
  CHECK(cfg.data_connections == 16);
  CHECK(cfg.instance == "staging_2");
  CHECK(cfg.worker_path == "/opt/culvert/culvert-worker");
  CHECK(cfg.log_level == "debug");
  CHECK_NOTHROW(validate(cfg));
}

TEST_CASE("load_toml keeps defaults for missing keys", "[config]") {
  CHECK(load_toml("", "empty.toml") == config{});
  CHECK(load_toml("[server]\n", "empty.toml") == config{});
  const config cfg = load_toml("[server]\nmax_tunnels = 7\n", "one.toml");
  config expected;
  expected.max_tunnels = 7;
  CHECK(cfg == expected);
}

TEST_CASE("load_toml names the file, line and key of an unknown key", "[config]") {
  const auto message = load_error("[server]\ncontrol = \"127.0.0.1:1\"\nbogus = 1\n");
  CHECK(message == "test.toml: line 3: unknown key 'server.bogus'");
  CHECK_THAT(load_error("[client]\nserver = \"x\"\n"),
             Catch::Contains("line 1") && Catch::Contains("unknown table [client]"));
  CHECK_THAT(load_error("control = \"127.0.0.1:1\"\n"),
             Catch::Contains("unknown key 'control'") && Catch::Contains("[server]"));
  CHECK_THAT(load_error("[server.extra]\na = 1\n"), Catch::Contains("unknown key 'server.extra'"));
  CHECK_THAT(load_error("server = 5\n"), Catch::Contains("server must be a table"));
}

TEST_CASE("load_toml names the key and the expected type of a wrong value", "[config]") {
  CHECK(load_error("[server]\nmax_tunnels = \"10\"\n") ==
        "test.toml: line 2: max_tunnels must be an integer, got a string");
  CHECK(load_error("[server]\ncontrol = 7835\n") ==
        "test.toml: line 2: control must be a string, got an integer");
  CHECK_THAT(load_error("[server]\ngrace_period = 1.5\n"),
             Catch::Contains("grace_period must be an integer, got a floating-point number"));
  CHECK_THAT(load_error("[server]\ntokens = \"abc\"\n"),
             Catch::Contains("tokens must be an array of strings, got a string"));
  CHECK_THAT(load_error("[server]\ntokens = [\"a-0123456789abcdef\", 2]\n"),
             Catch::Contains("tokens[1] must be a string, got an integer"));
  CHECK_THAT(load_error("[server]\nlog_level = true\n"),
             Catch::Contains("log_level must be a string, got a boolean"));
}

TEST_CASE("load_toml reports syntax errors and bad values with their line", "[config]") {
  CHECK_THAT(load_error("[server]\ncontrol = \n"), Catch::StartsWith("test.toml: line 2: "));
  CHECK_THAT(load_error("[server]\nmax_tunnels = 1\nmax_tunnels = 2\n"),
             Catch::StartsWith("test.toml: line 3: "));
  CHECK(load_error("[server]\n\ndata_connections = 17\n") ==
        "test.toml: line 3: data_connections must be between 1 and 16, got 17");
  CHECK_THAT(load_error("[server]\nports = \"20000\"\n"),
             Catch::StartsWith("test.toml: line 2: ports must be MIN-MAX"));
  CHECK_THAT(load_error("[server]\nmax_tunnels = 99999999999\n"),
             Catch::Contains("max_tunnels must be between 1 and 65536"));
  CHECK_THAT(load_error("[server]\ntokens = [\"\"]\n"),
             Catch::Contains("tokens[0] must be 16-255 bytes, got 0 bytes"));
}

TEST_CASE("flags override the file, the file overrides defaults", "[config]") {
  const temp_file file(R"([server]
max_tunnels = 10
base_domain = "file.example.com"
tokens = ["from-file-0123456789"]
grace_period = 60
)");
  std::filesystem::permissions(file.path, std::filesystem::perms(0600));  // it holds a token
  const auto from_file = parse({"--config", file.path.string()});
  REQUIRE(from_file.cfg);
  CHECK(from_file.cfg->max_tunnels == 10);
  CHECK(from_file.cfg->base_domain == "file.example.com");
  CHECK(from_file.cfg->tokens == std::vector<std::string>{"from-file-0123456789"});
  CHECK(from_file.cfg->grace_period == 60s);
  CHECK(from_file.cfg->data_connections == 2);  // default kept

  const auto with_flags =
      parse({"--max-tunnels", "20", "--config", file.path.string(), "--token",
             "one-0123456789abcdef", "--token=two-0123456789abcdef", "--grace-period", "0"});
  REQUIRE(with_flags.cfg);
  CHECK(with_flags.cfg->max_tunnels == 20);
  CHECK(with_flags.cfg->base_domain == "file.example.com");
  CHECK(with_flags.cfg->tokens ==
        std::vector<std::string>{"one-0123456789abcdef", "two-0123456789abcdef"});
  CHECK(with_flags.cfg->grace_period == 0s);
}

TEST_CASE("every flag sets its field", "[config]") {
  const auto result = parse({"--control",
                             "0.0.0.0:0",
                             "--public-bind",
                             "::",
                             "--public-host",
                             "203.0.113.7",
                             "--base-domain",
                             "tunnel.test",
                             "--ports",
                             "1000-1001",
                             "--token",
                             "t-0123456789abcdef",
                             "--max-tunnels",
                             "3",
                             "--grace-period",
                             "4",
                             "--heartbeat-interval",
                             "6",
                             "--heartbeat-timeout",
                             "13",
                             "--handshake-timeout",
                             "8",
                             "--max-pending-handshakes",
                             "9",
                             "--max-tunnels-per-token",
                             "2",
                             "--max-tunnels-per-address",
                             "3",
                             "--max-handshakes-per-address",
                             "4",
                             "--auth-failure-delay-ms",
                             "0",
                             "--data-connections",
                             "1",
                             "--instance",
                             "i-1",
                             "--worker",
                             "/bin/w",
                             "--log-level",
                             "trace"});
  INFO(result.output);
  REQUIRE(result.cfg);
  const config& cfg = *result.cfg;
  CHECK(cfg.control_address == "0.0.0.0:0");
  CHECK(cfg.public_bind == "::");
  CHECK(cfg.public_host == "203.0.113.7");
  CHECK(cfg.base_domain == "tunnel.test");
  CHECK(cfg.port_min == 1000);
  CHECK(cfg.port_max == 1001);
  CHECK(cfg.tokens == std::vector<std::string>{"t-0123456789abcdef"});
  CHECK(cfg.max_tunnels == 3);
  CHECK(cfg.grace_period == 4s);
  CHECK(cfg.heartbeat_interval == 6s);
  CHECK(cfg.heartbeat_timeout == 13s);
  CHECK(cfg.handshake_timeout == 8s);
  CHECK(cfg.max_pending_handshakes == 9);
  CHECK(cfg.max_tunnels_per_token == 2);
  CHECK(cfg.max_tunnels_per_address == 3);
  CHECK(cfg.max_handshakes_per_address == 4);
  CHECK(cfg.auth_failure_delay == 0ms);
  CHECK(cfg.data_connections == 1);
  CHECK(cfg.instance == "i-1");
  CHECK(cfg.worker_path == "/bin/w");
  CHECK(cfg.log_level == "trace");
}

TEST_CASE("validate rejects each bad value with the setting's name", "[config]") {
  struct bad_case {
    std::function<void(config&)> change;
    std::string expected;  // substring of the message
  };
  const std::vector<bad_case> cases = {
      {[](config& c) { c.control_address = "127.0.0.1"; }, "control (--control) must be IP:PORT"},
      {[](config& c) { c.control_address = "::1:80"; }, "control (--control)"},
      {[](config& c) { c.control_address = "localhost:80"; }, "control (--control)"},
      {[](config& c) { c.control_address = "[127.0.0.1]:80"; }, "control (--control)"},
      {[](config& c) { c.control_address = "127.0.0.1:65536"; }, "control (--control)"},
      {[](config& c) { c.control_address = ""; }, "control (--control)"},
      {[](config& c) { c.public_bind = "not-an-ip"; }, "public_bind (--public-bind) must be an IP"},
      {[](config& c) { c.public_bind = "[::1]"; }, "public_bind (--public-bind)"},
      {[](config& c) { c.public_bind = ""; }, "public_bind (--public-bind)"},
      {[](config& c) { c.public_host = "bad host"; }, "public_host (--public-host)"},
      {[](config& c) { c.base_domain = ""; }, "base_domain (--base-domain) must not be empty"},
      {[](config& c) { c.base_domain = "Example.com"; }, "base_domain (--base-domain)"},
      {[](config& c) { c.base_domain = "a..b"; }, "base_domain (--base-domain)"},
      {[](config& c) { c.base_domain = "example.com."; }, "base_domain (--base-domain)"},
      {[](config& c) { c.base_domain = "-a.com"; }, "starts or ends with '-'"},
      {[](config& c) { c.base_domain = "a-.com"; }, "starts or ends with '-'"},
      {[](config& c) { c.base_domain = "a_b.com"; }, "base_domain (--base-domain)"},
      {[](config& c) { c.base_domain = std::string(64, 'a') + ".com"; }, "1-63 characters"},
      {[](config& c) { c.base_domain = "10.0.0.1"; }, "not an IP address"},
      {[](config& c) { c.base_domain = std::string(50, 'a') + "." + std::string(50, 'b'); },
       "at most 100 characters"},
      {[](config& c) { c.port_min = 0; }, "ports (--ports) must be MIN-MAX with 1 <= MIN"},
      {[](config& c) {
         c.port_min = 30000;
         c.port_max = 20000;
       },
       "ports (--ports) must be MIN-MAX"},
      {[](config& c) {
         c.tokens = {"ok-0123456789abcdef", "short"};
       },
       "tokens (--token) token 2 must be 16-255 bytes, got 5 bytes"},
      {[](config& c) { c.tokens = {std::string(256, 'x')}; }, "got 256 bytes"},
      {[](config& c) { c.max_tunnels = 0; }, "max_tunnels (--max-tunnels) must be between 1"},
      {[](config& c) { c.max_tunnels = 65537; }, "max_tunnels (--max-tunnels)"},
      {[](config& c) { c.grace_period = -1s; }, "grace_period (--grace-period) must be between 0"},
      {[](config& c) { c.grace_period = std::chrono::seconds(limits::max_seconds + 1); },
       "grace_period (--grace-period)"},
      {[](config& c) { c.heartbeat_interval = 0s; }, "heartbeat_interval (--heartbeat-interval)"},
      {[](config& c) {
         c.heartbeat_interval = 3601s;
         c.heartbeat_timeout = 7200s;
       },
       "heartbeat_interval (--heartbeat-interval) must be between 1 and 3600, got 3601"},
      {[](config& c) { c.heartbeat_timeout = 5s; },
       "heartbeat_timeout (--heartbeat-timeout) must be greater than heartbeat_interval (5), "
       "got 5"},
      {[](config& c) {
         c.heartbeat_interval = 10s;
         c.heartbeat_timeout = 9s;
       },
       "must be greater than heartbeat_interval (10)"},
      {[](config& c) { c.handshake_timeout = 0s; }, "handshake_timeout (--handshake-timeout)"},
      {[](config& c) { c.max_pending_handshakes = 0; },
       "max_pending_handshakes (--max-pending-handshakes)"},
      {[](config& c) { c.max_pending_reclaims = 0; },
       "max_pending_reclaims (--max-pending-reclaims) must be between 1 and 65536, got 0"},
      {[](config& c) { c.max_tunnels_per_token = 0; },
       "max_tunnels_per_token (--max-tunnels-per-token) must be between 1 and 65536, got 0"},
      {[](config& c) { c.max_tunnels_per_address = 0; },
       "max_tunnels_per_address (--max-tunnels-per-address) must be between 1"},
      {[](config& c) { c.max_tunnels_per_address = 65537; }, "max_tunnels_per_address"},
      {[](config& c) { c.max_handshakes_per_address = 0; },
       "max_handshakes_per_address (--max-handshakes-per-address) must be between 1"},
      {[](config& c) { c.auth_failure_delay = -1ms; },
       "auth_failure_delay_ms (--auth-failure-delay-ms) must be between 0 and 60000, got -1"},
      {[](config& c) { c.auth_failure_delay = 60001ms; }, "auth_failure_delay_ms"},
      {[](config& c) {
         c.tokens = {"t-0123456789abcdef"};
         c.tokens_file = "/etc/culvert/tokens.toml";
       },
       "tokens (--token) and tokens_file (--tokens-file) cannot be used together"},
      {[](config& c) { c.tokens_file = std::string("a\0b", 3); }, "tokens_file (--tokens-file)"},
      {[](config& c) { c.data_connections = 0; },
       "data_connections (--data-connections) must be between 1 and 16, got 0"},
      {[](config& c) { c.data_connections = 17; }, "data_connections (--data-connections)"},
      {[](config& c) { c.instance = ""; }, "instance (--instance) must be 1-32 characters"},
      {[](config& c) { c.instance = std::string(33, 'a'); }, "instance (--instance)"},
      {[](config& c) { c.instance = "a/b"; }, "instance (--instance)"},
      {[](config& c) { c.worker_path = std::string("a\0b", 3); }, "worker (--worker)"},
      {[](config& c) { c.log_level = "verbose"; },
       "log_level (--log-level) must be one of trace, debug, info, warn, error, got 'verbose'"},
      {[](config& c) { c.log_level = "INFO"; }, "log_level (--log-level)"},
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    INFO("case " << i);
    CHECK_THAT(validate_error(cases[i].change), Catch::Contains(cases[i].expected));
  }
}

TEST_CASE("validate accepts the edges of each range", "[config]") {
  config cfg;
  cfg.control_address = "[::]:0";
  cfg.public_bind = "::1";
  cfg.public_host = "2001:db8::1";
  cfg.base_domain = std::string(63, 'a') + "." + std::string(36, 'b');  // 100 characters
  cfg.port_min = cfg.port_max = 1;
  cfg.tokens = {std::string(255, 'x'), std::string(16, 'y')};
  cfg.max_tunnels = 1;
  cfg.grace_period = 0s;
  cfg.heartbeat_interval = 1s;
  cfg.heartbeat_timeout = 2s;
  cfg.handshake_timeout = 1s;
  cfg.max_pending_handshakes = 1;
  cfg.max_tunnels_per_token = 65536;
  cfg.max_tunnels_per_address = 1;
  cfg.max_handshakes_per_address = 65536;
  cfg.auth_failure_delay = 0ms;
  cfg.data_connections = 16;
  cfg.instance = std::string(32, 'Z');
  cfg.log_level = "error";
  CHECK_NOTHROW(validate(cfg));
}

TEST_CASE("flag --help exits 0 and mentions every flag and its default", "[config]") {
  const auto result = parse({"--help"});
  CHECK_FALSE(result.cfg);
  CHECK(result.exit_code == 0);
  for (const char* flag : {"--config",
                           "--control",
                           "--public-bind",
                           "--public-host",
                           "--base-domain",
                           "--ports",
                           "--token",
                           "--max-tunnels",
                           "--grace-period",
                           "--heartbeat-interval",
                           "--heartbeat-timeout",
                           "--handshake-timeout",
                           "--max-pending-handshakes",
                           "--tokens-file",
                           "--max-tunnels-per-token",
                           "--max-tunnels-per-address",
                           "--max-handshakes-per-address",
                           "--auth-failure-delay-ms",
                           "--data-connections",
                           "--instance",
                           "--worker",
                           "--log-level",
                           "--print-config",
                           "--version",
                           "--help"}) {
    INFO(flag);
    CHECK_THAT(result.output, Catch::Contains(flag));
  }
  for (const char* shown_default :
       {"(default: 127.0.0.1:7835)", "(default: 127.0.0.1)", "(default: the --public-bind",
        "(default: localhost)", "(default: 20000-20999)", "(default: 1000)", "(default: 30)",
        "(default: 5)", "(default: 256)", "(default: 2)", "(default: default)",
        "(default: culvert-worker", "(default: info)", "(default: none"}) {
    INFO(shown_default);
    CHECK_THAT(result.output, Catch::Contains(shown_default));
  }
}

TEST_CASE("flag --version exits 0 with the version", "[config]") {
  const auto result = parse({"--version"});
  CHECK_FALSE(result.cfg);
  CHECK(result.exit_code == 0);
  CHECK(result.output == "culvert-supervisor " + std::string(version()) + "\n");
  CHECK(version() == CULVERT_VERSION);  // project(VERSION) in CMakeLists.txt
  const std::string v(version());  // MAJOR.MINOR.PATCH
  CHECK(std::count(v.begin(), v.end(), '.') == 2);
  CHECK(v.find_first_not_of("0123456789.") == std::string::npos);
}

TEST_CASE("flag --print-config round-trips through load_toml", "[config]") {
  const std::vector<std::string> args = {"--control",      "[::1]:0",
                                         "--base-domain",  "x.example",
                                         "--ports",        "4000-4010",
                                         "--token",        "plain-0123456789abcdef",
                                         "--token",        "q\"uo\\te\tnl\n-0123456789",
                                         "--worker",       "/path with spaces/\"w\"",
                                         "--log-level",    "warn",
                                         "--grace-period", "0"};
  const auto run = parse(args);
  REQUIRE(run.cfg);

  auto printed_args = args;
  printed_args.push_back("--print-config");
  const auto printed = parse(printed_args);
  CHECK_FALSE(printed.cfg);
  REQUIRE(printed.exit_code == 0);
  CHECK_THAT(printed.output, Catch::Contains("[server]"));

  const config reloaded = load_toml(printed.output, "printed.toml");
  CHECK(reloaded == *run.cfg);
  CHECK(to_toml(reloaded) == printed.output);

  // Defaults too, including the empty strings.
  CHECK(load_toml(to_toml(config{}), "defaults.toml") == config{});
}

TEST_CASE("bad --ports syntax is an error", "[config]") {
  for (const char* ports : {"20000", "a-b", "20000-", "-20000", "1-2-3", "30000-20000", "0-10",
                            "1-70000", " 1-2", "1 - 2", "", "0x10-0x20", "+1-2"}) {
    INFO("--ports " << ports);
    const auto result = parse({"--ports", ports});
    CHECK_FALSE(result.cfg);
    CHECK(result.exit_code == 2);
    CHECK_THAT(result.output, Catch::Contains("--ports"));
  }
  const auto ok = parse({"--ports", "1-65535"});
  REQUIRE(ok.cfg);
  CHECK(ok.cfg->port_min == 1);
  CHECK(ok.cfg->port_max == 65535);
}

TEST_CASE("flag errors exit 2 with the program name and a hint", "[config]") {
  const auto check_error = [](std::vector<std::string> args, const std::string& expected) {
    const auto result = parse(std::move(args));
    CHECK_FALSE(result.cfg);
    CHECK(result.exit_code == 2);
    CHECK_THAT(result.output, Catch::StartsWith("culvert-supervisor: ") &&
                                  Catch::Contains(expected) && Catch::Contains("--help"));
  };
  check_error({"--max-tunnels", "abc"}, "--max-tunnels must be an integer, got 'abc'");
  check_error({"--max-tunnels", "0"}, "--max-tunnels must be between 1 and 65536, got 0");
  check_error({"--data-connections", "300"}, "--data-connections must be between 1 and 16");
  check_error({"--grace-period", "-1"}, "--grace-period must be between 0");
  check_error({"--heartbeat-interval", "30"}, "must be greater than heartbeat_interval (30)");
  check_error({"--log-level", "loud"}, "--log-level must be one of");
  check_error({"--control", "nohost"}, "--control must be IP:PORT");
  check_error({"--token", ""}, "--token (occurrence 1) must be 16-255 bytes, got 0 bytes");
  check_error({"--no-such-flag"}, "--no-such-flag");
  check_error({"extra"}, "extra");
  check_error({"--max-tunnels"}, "--max-tunnels");
  check_error({"--config", "/nonexistent/culvert.toml"},
              "cannot open config file '/nonexistent/culvert.toml'");
}

TEST_CASE("a bad config file fails parse_arguments with its location", "[config]") {
  const temp_file file("[server]\nmax_tunnels = 5\nlisten = \"x\"\n");
  const auto result = parse({"--config", file.path.string()});
  CHECK_FALSE(result.cfg);
  CHECK(result.exit_code == 2);
  CHECK_THAT(result.output,
             Catch::Contains(file.path.string() + ": line 3: unknown key 'server.listen'"));
}

TEST_CASE("user: default nobody, set by --user and the user key, checked and printed", "[config]") {
  CHECK(config{}.user == "nobody");
  CHECK_THAT(parse({"--help"}).output, Catch::Contains("--user"));
  CHECK_THAT(parse({"--help"}).output, Catch::Contains("(default: nobody)"));

  const auto by_flag = parse({"--user", "culvert-run_1.x"});
  INFO(by_flag.output);
  REQUIRE(by_flag.cfg);
  CHECK(by_flag.cfg->user == "culvert-run_1.x");

  const config from_file = load_toml("[server]\nuser = \"tunnels\"\n", "user.toml");
  CHECK(from_file.user == "tunnels");
  const temp_file file("[server]\nuser = \"from-file\"\n");
  const auto overridden = parse({"--config", file.path.string(), "--user", "from-flag"});
  REQUIRE(overridden.cfg);
  CHECK(overridden.cfg->user == "from-flag");

  const auto printed = parse({"--user", "svc", "--print-config"});
  REQUIRE(printed.exit_code == 0);
  CHECK_THAT(printed.output, Catch::Contains("user = \"svc\""));
  CHECK(load_toml(printed.output, "printed.toml").user == "svc");

  for (const std::string& bad :
       std::vector<std::string>{"", "-rf", "a b", "root:x", "a/b", std::string(33, 'u')}) {
    INFO("user '" << bad << "'");
    CHECK_THAT(validate_error([&](config& c) { c.user = bad; }),
               Catch::Contains("user (--user) must be a user name"));
  }
  CHECK_NOTHROW(validate([] {
    config c;
    c.user = std::string(32, 'u');
    return c;
  }()));
  CHECK_THAT(load_error("[server]\nuser = 7\n"), Catch::Contains("user must be a string"));
  const auto bad_flag = parse({"--user", "a b"});
  CHECK(bad_flag.exit_code == 2);
  CHECK_THAT(bad_flag.output, Catch::Contains("--user must be a user name"));
}

TEST_CASE("tokens_file and the per-token and per-address limits", "[config][tokens]") {
  const auto by_flag = parse({"--tokens-file", "/etc/culvert/tokens.toml"});
  INFO(by_flag.output);
  REQUIRE(by_flag.cfg);
  CHECK(by_flag.cfg->tokens_file == "/etc/culvert/tokens.toml");
  CHECK(load_toml("[server]\ntokens_file = \"t.toml\"\n", "f.toml").tokens_file == "t.toml");
  CHECK_THAT(load_error("[server]\ntokens_file = 1\n"),
             Catch::Contains("tokens_file must be a string"));
  CHECK(load_error("[server]\nauth_failure_delay_ms = 60001\n") ==
        "test.toml: line 2: auth_failure_delay_ms must be between 0 and 60000, got 60001");

  // One source of tokens: --token next to --tokens-file, from the file or the flags, is refused.
  const auto both =
      parse({"--token", "t-0123456789abcdef", "--tokens-file", "/etc/culvert/tokens.toml"});
  CHECK_FALSE(both.cfg);
  CHECK(both.exit_code == 2);
  CHECK_THAT(both.output, Catch::Contains("cannot be used together"));
  const temp_file file("[server]\ntokens_file = \"/etc/culvert/tokens.toml\"\n");
  CHECK(parse({"--config", file.path.string(), "--token", "t-0123456789abcdef"}).exit_code == 2);

  const auto printed = parse({"--tokens-file", "/x/tokens.toml", "--max-tunnels-per-token", "7",
                              "--max-tunnels-per-address", "8", "--max-handshakes-per-address", "9",
                              "--auth-failure-delay-ms", "1500", "--print-config"});
  REQUIRE(printed.exit_code == 0);
  CHECK_THAT(printed.output, Catch::Contains("tokens_file = \"/x/tokens.toml\"") &&
                                 Catch::Contains("auth_failure_delay_ms = 1500"));
  const config reloaded = load_toml(printed.output, "printed.toml");
  CHECK(reloaded.tokens_file == "/x/tokens.toml");
  CHECK(reloaded.max_tunnels_per_token == 7);
  CHECK(reloaded.max_tunnels_per_address == 8);
  CHECK(reloaded.max_handshakes_per_address == 9);
  CHECK(reloaded.auth_failure_delay == 1500ms);

  const auto help = parse({"--help"}).output;
  CHECK_THAT(help, Catch::Contains("--tokens-file FILE") && Catch::Contains("(default: 16)") &&
                       Catch::Contains("(default: 64)") && Catch::Contains("(default: 1000)"));
}

// Found by tests/fuzz/fuzz_args: a flag may carry any bytes, a TOML file only UTF-8, so such a
// value made --print-config print a file that --config then refused.
TEST_CASE("flags holding bytes a TOML file cannot hold are refused", "[config]") {
  auto result = parse({"--worker", "/opt/\x90/culvert-worker"});
  CHECK(result.exit_code == 2);
  CHECK_THAT(result.output, Catch::Contains("--worker must be valid UTF-8"));
  CHECK(parse({"--tls-cert", "/etc/\xc0\xaf", "--tls-key", "/etc/k.pem"}).exit_code == 2);
  CHECK(parse({"--token", "abcdefghijklmnop\xff"}).exit_code == 2);
  result = parse(
      {"--worker", "/opt/culvert/w\xc3\xb6rker", "--token", "t-0123456789abcdef\xe2\x82\xac"});
  REQUIRE(result.cfg);
  CHECK(load_toml(to_toml(*result.cfg), "printed.toml") == *result.cfg);
}

TEST_CASE("max_visitors: default, flag, file and range", "[config]") {
  CHECK(config{}.max_visitors == 16384);
  auto from_flag = parse({"--max-visitors", "100"});
  REQUIRE(from_flag.cfg);
  CHECK(from_flag.cfg->max_visitors == 100);
  CHECK(load_toml("[server]\nmax_visitors = 5\n", "test.toml").max_visitors == 5);
  CHECK(load_error("[server]\nmax_visitors = 0\n") ==
        "test.toml: line 2: max_visitors must be between 1 and 1000000, got 0");
}

// A token is a secret wherever it is given: 16 bytes at least (as in a tokens file), a --config
// file that sets tokens is held to the tokens file's permission rule, and a token on the command
// line (readable by every account) is accepted with a warning.
TEST_CASE("tokens: same length and permission rules as the tokens file", "[config][tokens]") {
  namespace fs = std::filesystem;
  const temp_file file("[server]\ntokens = [\"from-file-0123456789\"]\n");
  const auto refusal = [&](fs::perms mode) {
    fs::permissions(file.path, mode);
    const auto result = parse({"--config", file.path.string()});
    CHECK_FALSE(result.cfg);
    CHECK(result.exit_code == 2);
    return result.output;
  };
  CHECK_THAT(refusal(fs::perms(0644)),
             Catch::Contains("config file '" + file.path.string() + "'") &&
                 Catch::Contains("is readable by group or others (mode 0644)") &&
                 Catch::Contains("chmod 600") && Catch::Contains("tokens_file"));
  CHECK_THAT(refusal(fs::perms(0640)), Catch::Contains("(mode 0640)"));
  CHECK_THAT(refusal(fs::perms(0620)), Catch::Contains("writable by group or others (mode 0620)"));
  fs::permissions(file.path, fs::perms(0600));
  CHECK(parse({"--config", file.path.string()}).cfg);

  const temp_file no_tokens("[server]\nmax_tunnels = 10\n");
  fs::permissions(no_tokens.path, fs::perms(0644));
  CHECK(parse({"--config", no_tokens.path.string()}).cfg);  // nothing secret: may be readable

  const auto short_token = parse({"--token", "fifteen-bytes.."});
  CHECK(short_token.exit_code == 2);
  CHECK_THAT(short_token.output, Catch::Contains("--token (occurrence 1) must be 16-255 bytes, "
                                                 "got 15 bytes"));
  CHECK_THAT(load_error("[server]\ntokens = [\"short\"]\n"),
             Catch::Contains("tokens[0] must be 16-255 bytes, got 5 bytes"));

  const auto on_command_line = parse({"--token", "sixteen-bytes..."});
  REQUIRE(on_command_line.cfg);
  REQUIRE(on_command_line.warnings.size() == 1);
  CHECK_THAT(on_command_line.warnings[0],
             Catch::Contains("every account") && Catch::Contains("--tokens-file"));
  CHECK(parse({"--max-tunnels", "3"}).warnings.empty());
}

TEST_CASE("tokens: a --config file that sets tokens must be our own", "[config][tokens]") {
  if (!culvert::tests::running_as_root())
    return culvert::tests::skip("not root: cannot give a file to another account");
  const temp_file file("[server]\ntokens = [\"from-file-0123456789\"]\n");
  std::filesystem::permissions(file.path, std::filesystem::perms(0600));
  REQUIRE(::chown(file.path.c_str(), 65534, 65534) == 0);
  CHECK_THAT(parse({"--config", file.path.string()}).output,
             Catch::Contains("is owned by uid 65534"));
}
