// Unit tests for the token registry: tokens-file parsing and its errors, file permission checks,
// authentication against hashed secrets, and the subdomain rules. Runs in the unit-test binary;
// every temporary file it creates is removed, also when a check fails.
#include "supervisor/token_registry.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "supervisor/config.hpp"
#include "tests/support/skip.hpp"

namespace {

using namespace culvert::supervisor;

const char* const two_tokens = R"(
[[token]]
name = "alice"
token = "alice-secret-token-0001"
max_tunnels = 5
subdomains = ["alice-*", "Demo"]
reserved = ["alice"]

[[token]]
name = "bob"
token = "bob-secret-token-0002"
reserved = ["bob", "shop"]
)";

std::string parse_error(const std::string& text) {
  try {
    token_registry::parse(text, "tokens.toml", 16);
  } catch (const config_error& e) {
    return e.what();
  }
  FAIL("parse accepted: " << text);
  return {};
}

struct temp_tokens {
  temp_tokens(const std::string& text, mode_t mode)
      : path(std::filesystem::temp_directory_path() /
             ("culvert-tokens-test-" + std::to_string(::getpid()) + "-" +
              std::to_string(counter++) + ".toml")) {
    std::ofstream(path) << text;
    ::chmod(path.c_str(), mode);
  }
  ~temp_tokens() { std::filesystem::remove(path); }
  std::filesystem::path path;
  static inline int counter = 0;
};

}  // namespace

TEST_CASE("glob patterns match whole labels", "[tokens]") {
  CHECK(glob_match("*", ""));
  CHECK(glob_match("*", "anything"));
  CHECK(glob_match("alice-*", "alice-"));
  CHECK(glob_match("alice-*", "alice-dev"));
  CHECK_FALSE(glob_match("alice-*", "alice"));
  CHECK_FALSE(glob_match("alice-*", "xalice-dev"));
  CHECK(glob_match("*-dev", "api-dev"));
  CHECK_FALSE(glob_match("*-dev", "api-dev2"));
  CHECK(glob_match("a*b*c", "aXXbYYbc"));
  CHECK_FALSE(glob_match("a*b*c", "aXXbYYbd"));
  CHECK(glob_match("exact", "exact"));
  CHECK_FALSE(glob_match("exact", "exactly"));
  CHECK(glob_match("**x", "x"));
}

TEST_CASE("a tokens file gives each token its own policy", "[tokens]") {
  const auto registry = token_registry::parse(two_tokens, "tokens.toml", 16);
  CHECK_FALSE(registry.open());
  CHECK(registry.size() == 2);

  const token_policy* alice = registry.authenticate("alice-secret-token-0001");
  REQUIRE(alice);
  CHECK(alice->name == "alice");
  CHECK(alice->max_tunnels == 5);
  CHECK(alice->subdomains == std::vector<std::string>{"alice-*", "demo"});  // lowercased
  CHECK(alice->reserved == std::vector<std::string>{"alice"});

  const token_policy* bob = registry.authenticate("bob-secret-token-0002");
  REQUIRE(bob);
  CHECK(bob->name == "bob");
  CHECK(bob->max_tunnels == 16);  // the server's default
  CHECK(bob->subdomains == std::vector<std::string>{"*"});
  CHECK(registry.find("bob") == bob);
  CHECK(registry.find("carol") == nullptr);
}

TEST_CASE("every kind of bad token is refused the same way", "[tokens]") {
  const auto registry = token_registry::parse(two_tokens, "tokens.toml", 16);
  for (const std::string& bad :
       {std::string(), std::string("alice-secret-token-000"),
        std::string("alice-secret-token-0001 "), std::string("ALICE-SECRET-TOKEN-0001"),
        std::string(255, 'x'), std::string("alice-secret-token-0001\0", 24)}) {
    INFO("presented " << bad.size() << " bytes");
    CHECK(registry.authenticate(bad) == nullptr);
  }
  CHECK(registry.check_requested_name(nullptr, "x") == std::string(token_registry::refusal));
}

TEST_CASE("sha256 entries keep only the digest in the file", "[tokens]") {
  // printf %s abc | sha256sum
  const std::string abc_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  const auto abc = token_registry::parse(
      "[[token]]\nname = \"abc\"\nsha256 = \"" + abc_sha256 + "\"\n", "abc.toml", 3);
  REQUIRE(abc.authenticate("abc"));
  CHECK(abc.authenticate("abc")->name == "abc");
  CHECK(abc.authenticate("abd") == nullptr);
  CHECK(abc.authenticate(abc_sha256) == nullptr);  // the digest itself is not a token

  std::string upper = abc_sha256;
  for (char& c : upper) c = char(std::toupper(static_cast<unsigned char>(c)));
  const auto abc_upper = token_registry::parse(
      "[[token]]\nname = \"abc\"\nsha256 = \"" + upper + "\"\n", "abc.toml", 3);
  CHECK(abc_upper.authenticate("abc"));
}

TEST_CASE("tokens file errors name the file, line and entry, never the secret", "[tokens]") {
  CHECK(parse_error("") ==
        "tokens.toml: defines no [[token]]; leave out --tokens-file to accept "
        "any client");
  CHECK_THAT(parse_error("[[token]]\nname = \"a\"\ntoken = \n"),
             Catch::StartsWith("tokens.toml: line 3: "));
  CHECK_THAT(parse_error("tokens = 1\n"),
             Catch::StartsWith("tokens.toml: line 1: unknown key 'tokens'"));
  CHECK_THAT(parse_error("token = \"abc\"\n"),
             Catch::StartsWith("tokens.toml: line 1: token must be [[token]] tables"));
  CHECK_THAT(parse_error("[[token]]\ntoken = \"0123456789abcdef\"\n"),
             Catch::StartsWith("tokens.toml: line 1: [[token]] needs a name"));
  CHECK_THAT(parse_error("[[token]]\nname = \"a\"\n"), Catch::Contains("needs token or sha256"));
  CHECK_THAT(parse_error("[[token]]\nname = \"a b\"\ntoken = \"0123456789abcdef\"\n"),
             Catch::StartsWith("tokens.toml: line 2: name must be 1-64 characters"));
  CHECK_THAT(parse_error("[[token]]\nname = \"a\"\n\ntoken = \"short-secret\"\n"),
             Catch::StartsWith("tokens.toml: line 4: token must be 16-255 bytes, got 12 bytes") &&
                 !Catch::Contains("short-secret"));
  CHECK_THAT(parse_error("[[token]]\nname = \"a\"\ntoken = \"" + std::string(256, 'k') + "\"\n"),
             Catch::Contains("got 256 bytes"));
  CHECK_THAT(parse_error("[[token]]\nname = \"a\"\nsha256 = \"abc\"\n"),
             Catch::Contains("line 3: sha256 must be 64 hexadecimal digits"));
  CHECK_THAT(parse_error("[[token]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nsha256 = \"" +
                         std::string(64, 'a') + "\"\n"),
             Catch::Contains(": give token or sha256, not both"));
  CHECK_THAT(
      parse_error("[[token]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nmax_tunnels = 0\n"),
      Catch::Contains("line 4: max_tunnels must be an integer between 1 and 65536"));
  CHECK_THAT(
      parse_error("[[token]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nmax_tunnels = \"2\"\n"),
      Catch::Contains("max_tunnels must be an integer"));
  CHECK_THAT(
      parse_error(
          "[[token]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nsubdomains = [\"a.b\"]\n"),
      Catch::Contains("line 4: subdomains[0] must be 1-63 characters of a-z, 0-9, '-' and '*', "
                      "got 'a.b'"));
  CHECK_THAT(
      parse_error("[[token]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nsubdomains = []\n"),
      Catch::Contains("subdomains must not be empty"));
  CHECK_THAT(
      parse_error("[[token]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nreserved = [\"-x\"]\n"),
      Catch::Contains("line 4: reserved[0] must not start or end with '-'"));
  CHECK_THAT(
      parse_error("[[token]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nreserved = \"x\"\n"),
      Catch::Contains("reserved must be an array of strings"));
  CHECK_THAT(parse_error("[[token]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nlimit = 3\n"),
             Catch::Contains("line 4: unknown key 'limit' in [[token]]"));
}

TEST_CASE("names, secrets and reserved names must be unique across tokens", "[tokens]") {
  const std::string a =
      "[[token]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nreserved = [\"x\"]\n";
  CHECK_THAT(parse_error(a + "[[token]]\nname = \"a\"\ntoken = \"fedcba9876543210\"\n"),
             Catch::StartsWith("tokens.toml: line 5: name 'a' is already used"));
  CHECK_THAT(parse_error(a + "[[token]]\nname = \"b\"\ntoken = \"0123456789abcdef\"\n"),
             Catch::Contains("token 'b' has the same secret as 'a'") &&
                 !Catch::Contains("0123456789abcdef"));
  CHECK_THAT(parse_error(a + "[[token]]\nname = \"b\"\ntoken = \"fedcba9876543210\"\n"
                             "reserved = [\"X\"]\n"),
             Catch::Contains("reserved name 'x' of 'b' is already reserved by 'a'"));
}

TEST_CASE("a token may only request names its policy allows", "[tokens]") {
  const auto registry = token_registry::parse(two_tokens, "tokens.toml", 16);
  const token_policy* alice = registry.authenticate("alice-secret-token-0001");
  const token_policy* bob = registry.authenticate("bob-secret-token-0002");
  REQUIRE(alice);
  REQUIRE(bob);

  CHECK_FALSE(registry.check_requested_name(alice, "alice-dev"));
  CHECK_FALSE(registry.check_requested_name(alice, "Alice-Dev"));
  CHECK_FALSE(registry.check_requested_name(alice, "demo"));
  CHECK_FALSE(registry.check_requested_name(alice, "alice"));  // its own reserved name
  CHECK(registry.check_requested_name(alice, "other") ==
        "this token may only use names matching alice-*, demo");
  CHECK(registry.check_requested_name(alice, "shop") == "the name 'shop' is reserved");
  CHECK_THAT(*registry.check_requested_name(alice, ""),
             Catch::Contains("must ask for a name matching alice-*"));

  CHECK_FALSE(registry.check_requested_name(bob, ""));  // bob may get a generated name
  CHECK_FALSE(registry.check_requested_name(bob, "anything"));
  CHECK_FALSE(registry.check_requested_name(bob, "shop"));
  CHECK(registry.check_requested_name(bob, "ALICE") == "the name 'alice' is reserved");

  CHECK(registry.reserved_by_other(bob, "alice"));
  CHECK_FALSE(registry.reserved_by_other(alice, "alice"));
  CHECK_FALSE(registry.reserved_by_other(alice, "free"));
  CHECK(registry.is_reserved("Shop"));
  CHECK_FALSE(registry.is_reserved("free"));
}

TEST_CASE("an empty registry is open and accepts any client as anonymous", "[tokens]") {
  const token_registry registry;
  CHECK(registry.open());
  const token_policy* who = registry.authenticate("");
  REQUIRE(who);
  CHECK(who == registry.authenticate("whatever"));
  CHECK(who->name == "anonymous");
  CHECK(who->max_tunnels == limits::max_tunnels);
  CHECK_FALSE(registry.check_requested_name(who, ""));
  CHECK_FALSE(registry.check_requested_name(who, "any-name"));

  CHECK(token_registry::from_tokens({}, 4).open());
}

TEST_CASE("flag --token entries become token-1, token-2, ...", "[tokens]") {
  const auto registry = token_registry::from_tokens({"one", "two", "one"}, 4);
  CHECK(registry.size() == 2);  // the repeated one counts once
  const token_policy* one = registry.authenticate("one");
  const token_policy* two = registry.authenticate("two");
  REQUIRE(one);
  REQUIRE(two);
  CHECK(one->name == "token-1");
  CHECK(two->name == "token-2");
  CHECK(two->max_tunnels == 4);
  CHECK(registry.authenticate("three") == nullptr);
  CHECK(registry.authenticate("") == nullptr);
  CHECK_FALSE(registry.check_requested_name(one, ""));
}

TEST_CASE("policy pointers survive moving the registry", "[tokens]") {
  auto registry = token_registry::parse(two_tokens, "tokens.toml", 16);
  const token_policy* alice = registry.authenticate("alice-secret-token-0001");
  const token_registry moved = std::move(registry);
  CHECK(moved.authenticate("alice-secret-token-0001") == alice);

  token_registry open;
  const token_policy* anonymous = open.authenticate("");
  const token_registry moved_open = std::move(open);
  CHECK(moved_open.authenticate("") == anonymous);
}

TEST_CASE("the tokens file must not be readable or writable by others", "[tokens]") {
  const auto load_error = [](const temp_tokens& file) -> std::string {
    try {
      token_registry::load_file(file.path.string(), 16);
    } catch (const config_error& e) {
      return e.what();
    }
    return "(accepted)";
  };

  const temp_tokens good(two_tokens, 0600);
  std::vector<std::string> warnings;
  const auto registry = token_registry::load_file(good.path.string(), 16, &warnings);
  CHECK(registry.size() == 2);
  CHECK(warnings.empty());

  // Its group may not read the secrets either (the rule of every file of tokens, as for a
  // --config file that sets tokens or the client's --token-file).
  const temp_tokens group_readable(two_tokens, 0640);
  CHECK_THAT(load_error(group_readable),
             Catch::Contains("is readable by group or others (mode 0640)"));

  const temp_tokens world_readable(two_tokens, 0644);
  CHECK_THAT(load_error(world_readable),
             Catch::Contains("tokens file '") &&
                 Catch::Contains("is readable by group or others (mode 0644)") &&
                 Catch::Contains("chmod 600"));
  const temp_tokens group_writable(two_tokens, 0660);
  CHECK_THAT(load_error(group_writable),
             Catch::Contains("writable by group or others (mode 0660)"));
  const temp_tokens world_writable(two_tokens, 0602);
  CHECK_THAT(load_error(world_writable), Catch::Contains("writable by group or others"));

  CHECK_THAT(
      [] {
        try {
          token_registry::load_file("/nonexistent/tokens.toml", 16);
        } catch (const config_error& e) {
          return std::string(e.what());
        }
        return std::string("(accepted)");
      }(),
      Catch::Contains("cannot open tokens file '/nonexistent/tokens.toml': open: No such "
                      "file"));
  CHECK_THAT(
      [] {
        try {
          token_registry::load_file(std::filesystem::temp_directory_path().string(), 16);
        } catch (const config_error& e) {
          return std::string(e.what());
        }
        return std::string("(accepted)");
      }(),
      Catch::Contains("is not a regular file"));
  CHECK_THAT(load_error(temp_tokens("[[token]]\nname = \"a\"\n", 0600)),
             Catch::Contains(": line 1: ") && Catch::Contains("needs token or sha256"));
}

TEST_CASE("the tokens file must be our own", "[tokens]") {
  if (!culvert::tests::running_as_root())
    return culvert::tests::skip("not root: cannot give a file to another account");
  const temp_tokens foreign(two_tokens, 0600);
  REQUIRE(::chown(foreign.path.c_str(), 4242, 4242) == 0);
  CHECK_THROWS_WITH(token_registry::load_file(foreign.path.string(), 16),
                    Catch::Contains("is owned by uid 4242"));
}
