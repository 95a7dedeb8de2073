// Where the culvert CLI takes its token from, and the rules it holds it to: 16-255 bytes from
// --token-file (a file only its owner may read), $CULVERT_TOKEN, or --token with a warning.
#include "client/client_options.hpp"

#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <vector>

namespace fs = std::filesystem;
using culvert::client::client_parse_result;

namespace {

client_parse_result parse(std::vector<const char*> args) {
  args.insert(args.begin(), {"culvert", "tcp", "127.0.0.1:5432", "--no-state"});
  return culvert::client::parse_client_arguments(int(args.size()), args.data());
}

struct token_file {
  fs::path path;
  token_file(const std::string& text, fs::perms mode) {
    path = fs::temp_directory_path() /
           ("culvert-token-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::ofstream(path) << text;
    fs::permissions(path, mode);
  }
  ~token_file() { fs::remove(path); }
  static inline int counter = 0;
};

}  // namespace

TEST_CASE("client token: from a file only its owner may read", "[client][tokens]") {
  ::unsetenv("CULVERT_TOKEN");
  const token_file good("token-0123456789abcdef\n", fs::perms(0600));
  const auto ok = parse({"--token-file", good.path.c_str()});
  REQUIRE(ok.options);
  CHECK(ok.options->token == "token-0123456789abcdef");
  CHECK(ok.warnings.empty());

  const token_file crlf("token-0123456789abcdef\r\nsecond line ignored\n", fs::perms(0400));
  const auto windows = parse({"--token-file", crlf.path.c_str()});
  REQUIRE(windows.options);
  CHECK(windows.options->token == "token-0123456789abcdef");

  const token_file loose("token-0123456789abcdef\n", fs::perms(0644));
  const auto refused = parse({"--token-file", loose.path.c_str()});
  CHECK_FALSE(refused.options);
  CHECK(refused.exit_code == culvert::client::exit_usage);
  CHECK_THAT(refused.output, Catch::Contains("token file '" + loose.path.string() + "'") &&
                                 Catch::Contains("readable by group or others (mode 0644)") &&
                                 Catch::Contains("chmod 600"));

  const token_file short_one("short\n", fs::perms(0600));
  CHECK_THAT(parse({"--token-file", short_one.path.c_str()}).output,
             Catch::Contains("the token from the token file must be 16-255 bytes, got 5 bytes"));
  CHECK(parse({"--token-file", "/nonexistent/token"}).exit_code == culvert::client::exit_usage);
  CHECK(parse({"--token-file", good.path.c_str(), "--token", "token-0123456789abcdef"}).exit_code ==
        culvert::client::exit_usage);
}

TEST_CASE("client token: --token warns, and is held to the same length", "[client][tokens]") {
  ::unsetenv("CULVERT_TOKEN");
  const auto flag = parse({"--token", "token-0123456789abcdef"});
  REQUIRE(flag.options);
  CHECK(flag.options->token == "token-0123456789abcdef");
  REQUIRE(flag.warnings.size() == 1);
  CHECK_THAT(flag.warnings[0], Catch::Contains("every account") &&
                                   Catch::Contains("--token-file") &&
                                   Catch::Contains("CULVERT_TOKEN"));

  const auto one_byte = parse({"--token", "x"});
  CHECK_FALSE(one_byte.options);
  CHECK_THAT(one_byte.output,
             Catch::Contains("the token from --token must be 16-255 bytes, got 1"));
  CHECK_FALSE(parse({"--token", ""}).options);
  CHECK_FALSE(parse({"--token", std::string(256, 'x').c_str()}).options);

  const auto none = parse({});
  REQUIRE(none.options);
  CHECK(none.options->token.empty());  // no token: for servers that need none
}

TEST_CASE("client token: from $CULVERT_TOKEN, without a warning", "[client][tokens]") {
  ::setenv("CULVERT_TOKEN", "env-token-0123456789", 1);
  const auto from_env = parse({});
  REQUIRE(from_env.options);
  CHECK(from_env.options->token == "env-token-0123456789");
  CHECK(from_env.warnings.empty());
  ::setenv("CULVERT_TOKEN", "too-short", 1);
  CHECK_THAT(parse({}).output, Catch::Contains("the token from $CULVERT_TOKEN must be 16-255"));
  ::unsetenv("CULVERT_TOKEN");
}
