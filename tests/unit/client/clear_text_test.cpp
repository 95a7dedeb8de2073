// When the culvert CLI talks to its server in clear text by default: only when every address
// of the server is loopback, whatever the name looks like.
#include "client/clear_text.hpp"

#include <catch2/catch.hpp>
#include <map>

#include "client/client_options.hpp"

using boost::asio::ip::address;
using boost::asio::ip::make_address;
using culvert::client::stays_on_this_machine;

namespace {

// A resolver that knows only the names it is given.
culvert::client::resolve_function fake(std::map<std::string, std::vector<std::string>> table) {
  return [table](const std::string& host) -> std::optional<std::vector<address>> {
    const auto it = table.find(host);
    if (it == table.end()) return std::nullopt;
    std::vector<address> out;
    for (const auto& a : it->second) out.push_back(make_address(a));
    return out;
  };
}

}  // namespace

TEST_CASE("clear text: literal addresses decide by themselves", "[clear_text]") {
  const auto none = fake({});
  CHECK(stays_on_this_machine("127.0.0.1", none));
  CHECK(stays_on_this_machine("127.8.9.10", none));
  CHECK(stays_on_this_machine("::1", none));
  CHECK_FALSE(stays_on_this_machine("10.0.0.1", none));
  CHECK_FALSE(stays_on_this_machine("2001:db8::1", none));
}

TEST_CASE("clear text: a name counts by every address it resolves to", "[clear_text]") {
  const auto dns = fake({{"localhost", {"127.0.0.1", "::1"}},
                         {"tunnel.localhost", {"127.0.0.1"}},
                         {"evil.localhost", {"203.0.113.5"}},
                         {"mixed.localhost", {"127.0.0.1", "203.0.113.5"}},
                         {"empty.localhost", {}},
                         {"dev-box", {"127.0.1.1"}}});
  CHECK(stays_on_this_machine("localhost", dns));
  CHECK(stays_on_this_machine("tunnel.localhost", dns));
  CHECK(stays_on_this_machine("dev-box", dns));
  CHECK_FALSE(stays_on_this_machine("evil.localhost", dns));     // the name is not the address
  CHECK_FALSE(stays_on_this_machine("mixed.localhost", dns));    // one remote address is enough
  CHECK_FALSE(stays_on_this_machine("empty.localhost", dns));    // nothing proves it local
  CHECK_FALSE(stays_on_this_machine("unknown.localhost", dns));  // does not resolve: TLS
}

TEST_CASE("clear text: the CLI's default follows the decision", "[clear_text]") {
  auto parse = [](std::vector<const char*> args) {
    args.insert(args.begin(), "culvert");
    return culvert::client::parse_client_arguments(int(args.size()), args.data());
  };
  const auto local = parse({"http", "3000", "--server", "127.0.0.1:7835", "--no-state"});
  REQUIRE(local.options);
  CHECK_FALSE(local.options->tls);
  CHECK(local.options->clear_needs_loopback);
  const auto remote = parse({"http", "3000", "--server", "192.0.2.7:7835", "--no-state"});
  REQUIRE(remote.options);
  CHECK(remote.options->tls);
  const auto forced = parse({"http", "3000", "--server", "127.0.0.1:7835", "--no-tls"});
  REQUIRE(forced.options);
  CHECK_FALSE(forced.options->tls);
  CHECK_FALSE(forced.options->clear_needs_loopback);  // the user asked: no check at connect
  // A name that resolves nowhere (".invalid" never does, RFC 6761) is not on this machine.
  const auto unknown =
      parse({"http", "3000", "--server", "no-such-host.invalid:7835", "--no-state"});
  REQUIRE(unknown.options);
  CHECK(unknown.options->tls);
}
