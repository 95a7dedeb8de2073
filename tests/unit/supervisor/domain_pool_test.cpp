// Unit tests for the supervisor's domain pool: generated and requested names, reserved and
// invalid labels, case folding, and names returning to the pool.
#include "supervisor/domain_pool.hpp"

#include <catch2/catch.hpp>
#include <regex>
#include <set>
#include <stdexcept>
#include <string>

namespace {
using culvert::supervisor::domain_pool;
using result = domain_pool::result;
}  // namespace

TEST_CASE("generated names are readable, valid and unique", "[domain_pool]") {
  domain_pool pool("localhost", 42);
  const std::regex shape("[a-z]+-[a-z]+-[1-9][0-9]+");
  std::set<std::string> seen;
  for (int i = 0; i < 5000; ++i) {
    const auto taken = pool.take("");
    REQUIRE(taken.status == result::ok);
    REQUIRE(taken.error.empty());
    const std::string suffix = ".localhost";
    REQUIRE(taken.domain.ends_with(suffix));
    const std::string label = taken.domain.substr(0, taken.domain.size() - suffix.size());
    INFO(label);
    REQUIRE(std::regex_match(label, shape));
    REQUIRE_FALSE(domain_pool::check_label(label));
    REQUIRE(seen.insert(taken.domain).second);
    REQUIRE(pool.in_use(taken.domain));
  }
  CHECK(pool.in_use_count() == 5000);
}

TEST_CASE("generation is reproducible from the seed", "[domain_pool]") {
  domain_pool a("example.com", 7), b("example.com", 7), c("example.com", 8);
  std::vector<std::string> from_a, from_b, from_c;
  for (int i = 0; i < 20; ++i) {
    from_a.push_back(a.take("").domain);
    from_b.push_back(b.take("").domain);
    from_c.push_back(c.take("").domain);
  }
  CHECK(from_a == from_b);
  CHECK(from_a != from_c);
}

TEST_CASE("generation widens the number instead of failing", "[domain_pool]") {
  // 64 * 64 * 90 = 368640 two-digit names exist; taking more forces wider numbers.
  domain_pool pool("localhost", 1);
  const std::size_t count = 370'000;
  std::size_t wide = 0, failed = 0;
  for (std::size_t i = 0; i < count; ++i) {  // plain counters: a REQUIRE each would be slow
    const auto taken = pool.take("");
    if (taken.status != result::ok) ++failed;
    if (taken.domain.find('.') - taken.domain.rfind('-') - 1 > 2) ++wide;
  }
  CHECK(failed == 0);
  CHECK(pool.in_use_count() == count);
  CHECK(wide >= count - 368'640);
}

TEST_CASE("a requested name is given once, case-insensitively", "[domain_pool]") {
  domain_pool pool("Tunnel.Example.com", 1);
  CHECK(pool.base_domain() == "tunnel.example.com");

  const auto first = pool.take("MyApp");
  REQUIRE(first.status == result::ok);
  CHECK(first.domain == "myapp.tunnel.example.com");
  CHECK(pool.in_use("myapp.tunnel.example.com"));
  CHECK(pool.in_use("MYAPP.Tunnel.Example.COM"));

  for (const char* again : {"myapp", "MYAPP", "myApp"}) {
    const auto second = pool.take(again);
    CHECK(second.status == result::name_taken);
    CHECK(second.domain.empty());
    CHECK(second.error == "subdomain 'myapp' is already in use");
  }
  CHECK(pool.in_use_count() == 1);
}

TEST_CASE("invalid and reserved names are refused with the reason", "[domain_pool]") {
  domain_pool pool("localhost", 1);
  const auto refused = [&](std::string_view label, const std::string& message) {
    const auto taken = pool.take(label);
    CHECK(taken.status == result::name_invalid);
    CHECK(taken.domain.empty());
    CHECK(taken.error == message);
  };
  refused("a_b", "subdomain 'a_b' is invalid: must be 1-63 characters of a-z, 0-9 and '-'");
  refused("a.b", "subdomain 'a.b' is invalid: must be 1-63 characters of a-z, 0-9 and '-'");
  refused("-abc", "subdomain '-abc' is invalid: must not start or end with '-'");
  refused("abc-", "subdomain 'abc-' is invalid: must not start or end with '-'");
  refused("www", "subdomain 'www' is invalid: is reserved");
  refused("WWW", "subdomain 'WWW' is invalid: is reserved");
  refused("Admin", "subdomain 'Admin' is invalid: is reserved");
  refused("xn--80ak6aa92e", "subdomain 'xn--80ak6aa92e' is invalid: is reserved");
  refused(std::string(64, 'a'), "subdomain '" + std::string(63, 'a') +
                                    "...' is invalid: must be 1-63 characters of a-z, 0-9 and '-'");
  // Untrusted bytes are not echoed as they are.
  refused(std::string("a\nb\x01"),
          "subdomain 'a\\x0ab\\x01' is invalid: must be 1-63 characters of a-z, "
          "0-9 and '-'");
  CHECK(pool.in_use_count() == 0);

  const auto longest = pool.take(std::string(63, 'z'));
  CHECK(longest.status == result::ok);
  CHECK(longest.domain == std::string(63, 'z') + ".localhost");
}

TEST_CASE("check_label gives the documented reasons", "[domain_pool]") {
  CHECK_FALSE(domain_pool::check_label("a"));
  CHECK_FALSE(domain_pool::check_label("my-app-2"));
  CHECK_FALSE(domain_pool::check_label("UPPER"));  // take() folds case
  CHECK_FALSE(domain_pool::check_label(std::string(63, '9')));
  CHECK(domain_pool::check_label("") == "must be 1-63 characters of a-z, 0-9 and '-'");
  CHECK(domain_pool::check_label(std::string(64, 'a')) ==
        "must be 1-63 characters of a-z, 0-9 and '-'");
  CHECK(domain_pool::check_label("caf\xc3\xa9") == "must be 1-63 characters of a-z, 0-9 and '-'");
  CHECK(domain_pool::check_label("-") == "must not start or end with '-'");
  for (const char* reserved : {"www", "api", "admin", "status", "mail", "ftp", "localhost"})
    CHECK(domain_pool::check_label(reserved) == "is reserved");
}

TEST_CASE("a label too long for the base domain is refused", "[domain_pool]") {
  const std::string base = std::string(50, 'b') + "." + std::string(49, 'c');  // 100 characters
  domain_pool pool(base, 1);
  const auto fits = pool.take(std::string(26, 'a'));  // 26 + 1 + 100 = 127
  CHECK(fits.status == result::ok);
  CHECK(fits.domain.size() == domain_pool::max_domain_length);
  const auto too_long = pool.take(std::string(27, 'a'));
  CHECK(too_long.status == result::name_invalid);
  CHECK_THAT(too_long.error, Catch::Contains("must be at most 26 characters"));
  for (int i = 0; i < 100; ++i) {
    const auto generated = pool.take("");
    REQUIRE(generated.status == result::ok);
    REQUIRE(generated.domain.size() <= domain_pool::max_domain_length);
  }
}

TEST_CASE("give_back makes a name free again", "[domain_pool]") {
  domain_pool pool("localhost", 3);
  const auto requested = pool.take("shop");
  const auto generated = pool.take("");
  REQUIRE(requested.status == result::ok);
  REQUIRE(generated.status == result::ok);
  CHECK(pool.in_use_count() == 2);

  pool.give_back(requested.domain);
  CHECK_FALSE(pool.in_use("shop.localhost"));
  CHECK(pool.in_use(generated.domain));
  CHECK(pool.in_use_count() == 1);
  CHECK(pool.take("shop").status == result::ok);

  pool.give_back("GENERATED-IS-NOT-THIS.localhost");  // not in use: nothing happens
  CHECK(pool.in_use_count() == 2);
  pool.give_back(generated.domain);
  CHECK_FALSE(pool.in_use(generated.domain));
  const std::string label = generated.domain.substr(0, generated.domain.find('.'));
  CHECK(pool.take(label).domain == generated.domain);
}

TEST_CASE("the base domain is checked", "[domain_pool]") {
  CHECK_FALSE(domain_pool::check_base_domain("localhost"));
  CHECK_FALSE(domain_pool::check_base_domain("tunnel.example.com"));
  CHECK_FALSE(domain_pool::check_base_domain("a-b.c0"));
  for (const char* bad :
       {"", "a..b", ".a", "a.", "-a.com", "a-.com", "A.com", "a_b.com", "1.2.3.4", "a b.com"}) {
    INFO(bad);
    CHECK(domain_pool::check_base_domain(bad));
  }
  CHECK(domain_pool::check_base_domain(std::string(101, 'a')));
  CHECK_THROWS_AS(domain_pool("", 1), std::invalid_argument);
  CHECK_THROWS_AS(domain_pool("bad..name", 1), std::invalid_argument);
}
