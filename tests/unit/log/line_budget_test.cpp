// The log-line budget for peers' texts: a burst beyond the budget is refused and counted, and
// the count is handed to the next line allowed once the window has passed.
#include "shared/log/line_budget.hpp"

#include <catch2/catch.hpp>

using culvert::shared::log::line_budget;

TEST_CASE("line_budget allows a few lines per window and counts the rest", "[log]") {
  line_budget budget(3, std::chrono::seconds(10));
  const auto start = line_budget::clock::now();
  std::uint64_t suppressed = 99;
  for (int i = 0; i < 3; ++i) {
    REQUIRE(budget.allow(start, suppressed));
    CHECK(suppressed == 0);
  }
  for (int i = 0; i < 1000; ++i)
    CHECK_FALSE(budget.allow(start + std::chrono::seconds(9), suppressed));
  REQUIRE(budget.allow(start + std::chrono::seconds(10), suppressed));
  CHECK(suppressed == 1000);
  REQUIRE(budget.allow(start + std::chrono::seconds(11), suppressed));
  CHECK(suppressed == 0);
}
