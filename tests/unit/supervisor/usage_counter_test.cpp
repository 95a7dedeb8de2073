// Unit tests for the per-key usage counter (tunnels per token and per source address, handshakes
// per source address). Runs in the unit-test binary.
#include "supervisor/usage_counter.hpp"

#include <catch2/catch.hpp>
#include <vector>

namespace {
using culvert::supervisor::usage_counter;
}  // namespace

TEST_CASE("a key holds at most its limit, and leases give units back", "[tokens][limits]") {
  usage_counter counter;
  std::vector<usage_counter::lease> held;
  for (int i = 0; i < 3; ++i) {
    auto lease = counter.try_acquire("192.0.2.1", 3);
    REQUIRE(lease);
    held.push_back(std::move(*lease));
  }
  CHECK(counter.count("192.0.2.1") == 3);
  CHECK_FALSE(counter.try_acquire("192.0.2.1", 3));
  CHECK(counter.try_acquire("192.0.2.1", 4));  // a larger limit (another policy) still fits
  CHECK(counter.count("192.0.2.1") == 3);      // ... and that lease was dropped at once
  CHECK(counter.try_acquire("192.0.2.2", 3));  // other keys are independent

  held.pop_back();
  CHECK(counter.count("192.0.2.1") == 2);
  CHECK(counter.try_acquire("192.0.2.1", 3));
  held.clear();
  CHECK(counter.count("192.0.2.1") == 0);
  CHECK(counter.keys() == 0);  // keys at zero are forgotten
}

TEST_CASE("a zero limit refuses everything", "[tokens][limits]") {
  usage_counter counter;
  CHECK_FALSE(counter.try_acquire("x", 0));
  CHECK(counter.keys() == 0);
}

TEST_CASE("moved leases release exactly once", "[tokens][limits]") {
  usage_counter counter;
  auto first = counter.try_acquire("k", 5);
  auto second = counter.try_acquire("k", 5);
  REQUIRE(first);
  REQUIRE(second);
  CHECK(counter.count("k") == 2);
  {
    usage_counter::lease moved = std::move(*first);
    CHECK(moved.key() == "k");
    CHECK(counter.count("k") == 2);
  }
  CHECK(counter.count("k") == 1);
  first.reset();  // the moved-from lease gives nothing back
  CHECK(counter.count("k") == 1);
  auto third = counter.try_acquire("other", 5);
  REQUIRE(third);
  *second = std::move(*third);  // assignment gives back what the target held
  CHECK(counter.count("k") == 0);
  CHECK(counter.count("other") == 1);
}

TEST_CASE("a lease may outlive its counter", "[tokens][limits]") {
  std::optional<usage_counter::lease> lease;
  {
    usage_counter counter;
    lease = counter.try_acquire("k", 1);
    REQUIRE(lease);
  }
  lease.reset();  // no use after free: the counts are shared
}
