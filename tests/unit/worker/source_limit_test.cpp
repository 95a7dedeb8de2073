// Per-source visitor counts: an IPv4 address or an IPv6 /64 is one source; a freed slot is
// usable again and an empty source leaves the table.
#include "worker/source_limit.hpp"

#include <catch2/catch.hpp>

using boost::asio::ip::make_address;

TEST_CASE("visitors are limited per IPv4 address and per IPv6 /64", "[worker][limits]") {
  culvert::worker::source_limit limit(2);
  CHECK(limit.try_add(make_address("192.0.2.1")));
  CHECK(limit.try_add(make_address("::ffff:192.0.2.1")));  // the same host, v4-mapped
  CHECK_FALSE(limit.try_add(make_address("192.0.2.1")));
  CHECK(limit.try_add(make_address("192.0.2.2")));  // another source

  CHECK(limit.try_add(make_address("2001:db8:1:2::1")));
  CHECK(limit.try_add(make_address("2001:db8:1:2:ffff::9")));  // same /64
  CHECK_FALSE(limit.try_add(make_address("2001:db8:1:2::77")));
  CHECK(limit.try_add(make_address("2001:db8:1:3::1")));  // next /64

  limit.remove(make_address("192.0.2.1"));
  CHECK(limit.open_from(make_address("192.0.2.1")) == 1);
  CHECK(limit.try_add(make_address("192.0.2.1")));
  limit.remove(make_address("192.0.2.2"));
  limit.remove(make_address("192.0.2.2"));  // more removals than adds change nothing
  CHECK(limit.open_from(make_address("192.0.2.2")) == 0);
  CHECK(limit.sources() == 3);
}
