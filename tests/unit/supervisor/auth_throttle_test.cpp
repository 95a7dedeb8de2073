// Unit tests for the bad-token throttle and the per-source key: doubling, cap, decay, success,
// eviction. Runs in the unit-test binary with an injected clock; nothing sleeps.
#include "supervisor/auth_throttle.hpp"

#include <catch2/catch.hpp>

namespace {

using namespace culvert::supervisor;
using namespace std::chrono_literals;
using clock_type = auth_throttle::clock;

}  // namespace

TEST_CASE("the refusal delay doubles per recent failure up to the cap", "[tokens][throttle]") {
  auth_throttle throttle;  // defaults: 1 s base, 30 s cap, forgotten after 10 min
  const auto t0 = clock_type::time_point{} + 1h;
  CHECK(throttle.delay_before_refusal("192.0.2.1", t0) == 1000ms);
  const std::chrono::milliseconds expected[] = {2s, 4s, 8s, 16s, 30s, 30s, 30s};
  for (const auto delay : expected) {
    throttle.record_failure("192.0.2.1", t0);
    CHECK(throttle.delay_before_refusal("192.0.2.1", t0) == delay);
  }
  // Another source is not affected.
  CHECK(throttle.delay_before_refusal("192.0.2.2", t0) == 1000ms);
  // Many failures never overflow.
  for (int i = 0; i < 100; ++i) throttle.record_failure("192.0.2.1", t0);
  CHECK(throttle.recent_failures("192.0.2.1", t0) == 107);
  CHECK(throttle.delay_before_refusal("192.0.2.1", t0) == 30s);
}

TEST_CASE("failures are forgotten after a quiet period or a success", "[tokens][throttle]") {
  auth_throttle throttle;
  const auto t0 = clock_type::time_point{} + 1h;
  throttle.record_failure("a", t0);
  throttle.record_failure("a", t0 + 9min);  // each failure restarts the quiet period
  CHECK(throttle.delay_before_refusal("a", t0 + 18min) == 4s);
  CHECK(throttle.delay_before_refusal("a", t0 + 19min) == 1s);
  throttle.record_failure("a", t0 + 19min);  // counts from zero again
  CHECK(throttle.recent_failures("a", t0 + 19min) == 1);

  throttle.record_failure("b", t0 + 19min);
  throttle.record_success("b");
  CHECK(throttle.delay_before_refusal("b", t0 + 19min) == 1s);
  throttle.record_success("never-seen");  // harmless
  CHECK(throttle.tracked() == 1);

  // Quiet sources are dropped from memory on the next failure anywhere.
  throttle.record_failure("c", t0 + 40min);
  CHECK(throttle.tracked() == 1);
}

TEST_CASE("the throttle tracks a bounded number of sources", "[tokens][throttle]") {
  auth_throttle throttle(auth_throttle_settings{
      .base_delay = 100ms, .max_delay = 1s, .forget_after = 10min, .max_sources = 3});
  const auto t0 = clock_type::time_point{} + 1h;
  throttle.record_failure("a", t0);
  throttle.record_failure("b", t0 + 1s);
  throttle.record_failure("c", t0 + 2s);
  throttle.record_failure("a", t0 + 3s);  // a is now the most recent
  throttle.record_failure("d", t0 + 4s);  // evicts b, the least recent
  CHECK(throttle.tracked() == 3);
  CHECK(throttle.recent_failures("b", t0 + 4s) == 0);
  CHECK(throttle.recent_failures("a", t0 + 4s) == 2);
  CHECK(throttle.recent_failures("c", t0 + 4s) == 1);
  CHECK(throttle.delay_before_refusal("a", t0 + 4s) == 400ms);
}

TEST_CASE("a zero base delay disables the throttle", "[tokens][throttle]") {
  auth_throttle throttle(auth_throttle_settings{.base_delay = 0ms});
  const auto t0 = clock_type::time_point{} + 1h;
  for (int i = 0; i < 10; ++i) throttle.record_failure("x", t0);
  CHECK(throttle.delay_before_refusal("x", t0) == 0ms);
}

TEST_CASE("a base delay above the cap is used as it is", "[tokens][throttle]") {
  auth_throttle throttle(auth_throttle_settings{.base_delay = 45s, .max_delay = 30s});
  const auto t0 = clock_type::time_point{} + 1h;
  throttle.record_failure("x", t0);
  CHECK(throttle.delay_before_refusal("x", t0) == 45s);
}

TEST_CASE("sources are IPv4 addresses or IPv6 /56 prefixes", "[tokens][throttle]") {
  using boost::asio::ip::make_address;
  CHECK(source_key(make_address("192.0.2.7")) == "192.0.2.7");
  CHECK(source_key(make_address("::ffff:192.0.2.7")) == "192.0.2.7");
  CHECK(source_key(make_address("2001:db8:1:2aa:aaaa:bbbb:cccc:dddd")) == "2001:db8:1:200::/56");
  CHECK(source_key(make_address("2001:db8:1:2::1")) ==
        source_key(make_address("2001:db8:1:2:ffff::9")));
  // One customer's /56 holds 256 /64s: they all count as one source.
  CHECK(source_key(make_address("2001:db8:1:3::1")) == source_key(make_address("2001:db8:1:2::1")));
  CHECK(source_key(make_address("2001:db8:1:ff::1")) == source_key(make_address("2001:db8:1::1")));
  CHECK(source_key(make_address("2001:db8:1:100::1")) !=
        source_key(make_address("2001:db8:1:2::1")));
  CHECK(source_key(make_address("::1")) == "::/56");
}
