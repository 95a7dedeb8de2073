// Staged handshake places: a full stage sheds its oldest member (once) to admit a newcomer, a
// move to another stage frees the first, and a released or shed ticket never sheds again.
#include "supervisor/handshake_slots.hpp"

#include <catch2/catch.hpp>
#include <vector>

using culvert::supervisor::handshake_slots;
using culvert::supervisor::handshake_stage;

TEST_CASE("a full stage sheds its oldest member, never the newcomer", "[handshake]") {
  handshake_slots slots({.unidentified = 2, .new_tunnel = 1, .known_tunnel = 1});
  std::vector<int> shed;
  auto a = slots.admit([&] { shed.push_back(1); });
  auto b = slots.admit([&] { shed.push_back(2); });
  auto c = slots.admit([&] { shed.push_back(3); });
  CHECK(shed == std::vector<int>{1});
  CHECK_FALSE(a.held());
  CHECK(b.held());
  CHECK(c.held());
  CHECK(slots.count(handshake_stage::unidentified) == 2);
  CHECK_FALSE(a.move_to(handshake_stage::known_tunnel));  // shed: on its way out

  // Identified, b leaves the unidentified stage: room for one more without shedding.
  REQUIRE(b.move_to(handshake_stage::known_tunnel));
  auto d = slots.admit([&] { shed.push_back(4); });
  CHECK(shed == std::vector<int>{1});
  CHECK(slots.count(handshake_stage::known_tunnel) == 1);

  // A full known stage sheds its own oldest, not an unidentified one.
  REQUIRE(c.move_to(handshake_stage::known_tunnel));
  CHECK(shed == std::vector<int>{1, 2});
  CHECK_FALSE(b.held());
  CHECK(slots.shed_total() == 2);
}

TEST_CASE("a released ticket frees its place and is never shed", "[handshake]") {
  handshake_slots slots({.unidentified = 1, .new_tunnel = 1, .known_tunnel = 1});
  int shed = 0;
  auto a = slots.admit([&] { ++shed; });
  a.release();
  CHECK(slots.count(handshake_stage::unidentified) == 0);
  auto b = slots.admit([&] { ++shed; });
  CHECK(shed == 0);
  {
    auto moved = std::move(b);  // a moved ticket keeps the place; its destructor gives it back
    CHECK(moved.held());
  }
  CHECK(slots.count(handshake_stage::unidentified) == 0);
  CHECK(shed == 0);
}
