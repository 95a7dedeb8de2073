// Window auto-tuning with synthetic delivery samples: growth when the delivery rate times the
// minimum round trip fills the window, none for a slow or backlogged local reader, the cap, the
// process-wide budget shared by two tuners and given back when a stream ends, and samples
// shorter than max(min RTT, 2 ms) left to run on.
#include "shared/net/window_tuner.hpp"

#include <catch2/catch.hpp>

namespace net = culvert::shared::net;
using namespace std::chrono_literals;
using clock_type = net::window_tuner::clock;

namespace {

constexpr std::uint32_t kib = 1024;
constexpr std::uint32_t initial = 256 * kib;
constexpr std::uint32_t cap = 16 * 1024 * kib;
constexpr std::chrono::microseconds rtt = 40ms;  // the minimum round trip of the link
constexpr std::uint64_t fast = 64 * 1024 * kib;  // delivered per round trip: far above any window

// One stream's window driven through time: each sample delivers `bytes` over `span`, then ends.
struct stream_under_test {
  net::window_tuner& tuner;
  net::stream_window window;
  clock_type::time_point now;

  stream_under_test(net::window_tuner& t, clock_type::time_point start)
      : tuner(t), window(t.open(start)), now(start) {}

  net::window_tuner::outcome sample(std::uint64_t bytes, clock_type::duration span,
                                    bool backlog_remains = false) {
    now += span;
    window.delivered(bytes);
    return tuner.end_sample(window, rtt, backlog_remains, now);
  }
};

}  // namespace

TEST_CASE("a window grows when delivery rate times min RTT fills it", "[window]") {
  net::window_budget budget;
  net::window_tuner tuner(initial, cap, budget);
  stream_under_test s(tuner, clock_type::now());
  CHECK(s.window.size == initial);
  // 1 MiB over one round trip: the bandwidth-delay product is 1 MiB, four times the window.
  auto first = s.sample(1024 * kib, rtt);
  CHECK(first.sampled);
  CHECK(first.growth == initial);  // the extra credit the peer gets with this WINDOW
  CHECK(s.window.size == 2 * initial);
  CHECK(budget.used() == initial);
  // The same rate again: the window (512 KiB) is still under twice the estimate.
  CHECK(s.sample(1024 * kib, rtt).growth == 2 * initial);
  CHECK(s.window.size == 4 * initial);
  CHECK(budget.used() == 3 * initial);
  // Twice the estimate at exactly the window still limits it: 1 MiB window, 512 KiB per RTT.
  CHECK(s.sample(512 * kib, rtt).growth == 4 * initial);
  CHECK(s.window.size == 8 * initial);
}

TEST_CASE("a window stays for a reader slower than the link", "[window]") {
  net::window_budget budget;
  net::window_tuner tuner(initial, cap, budget);
  stream_under_test s(tuner, clock_type::now());
  // 100 KiB per round trip: twice that is under the 256 KiB window, which is not the limit.
  for (int i = 0; i < 20; ++i) {
    auto o = s.sample(100 * kib, rtt);
    CHECK(o.sampled);
    CHECK(o.growth == 0);
  }
  CHECK(s.window.size == initial);
  CHECK(budget.used() == 0);
}

TEST_CASE("a backlogged sample never grows the window, however fast", "[window]") {
  net::window_budget budget;
  net::window_tuner tuner(initial, cap, budget);
  stream_under_test s(tuner, clock_type::now());
  // Bytes waited for the local socket during the sample: the local reader is the limit.
  s.window.backlog();
  auto o = s.sample(fast, rtt, /*backlog_remains=*/true);
  CHECK(o.sampled);
  CHECK(o.growth == 0);
  // Bytes still waited when that sample ended: the next one starts backlogged too.
  CHECK(s.sample(fast, rtt).growth == 0);
  // Nothing waits any more: a fast sample grows it.
  CHECK(s.sample(fast, rtt).growth == initial);
  CHECK(s.window.size == 2 * initial);
}

TEST_CASE("a window stops growing at max_window", "[window]") {
  net::window_budget budget;
  net::window_tuner tuner(initial, cap, budget);
  stream_under_test s(tuner, clock_type::now());
  std::uint32_t granted = 0;
  for (int i = 0; i < 20; ++i) granted += s.sample(fast * 16, rtt).growth;
  CHECK(s.window.size == cap);
  CHECK(granted == cap - initial);
  CHECK(budget.used() == cap - initial);
  auto o = s.sample(fast * 16, rtt);
  CHECK(o.sampled);
  CHECK(o.growth == 0);
  tuner.release(s.window);
  CHECK(budget.used() == 0);
}

TEST_CASE("two tuners share the process budget and get it back when a stream ends", "[window]") {
  // Two sessions of one process, room for 1 MiB of growth: one stream's 256 KiB -> 1 MiB
  // (768 KiB), then another's 256 KiB -> 512 KiB; nothing more until a stream ends.
  net::window_budget budget(1024 * kib);
  net::window_tuner first_session(initial, cap, budget), second_session(initial, cap, budget);
  const auto start = clock_type::now();
  stream_under_test a(first_session, start), b(second_session, start);
  CHECK(a.sample(fast, rtt).growth == initial);
  CHECK(a.sample(fast, rtt).growth == 2 * initial);
  CHECK(b.sample(fast, rtt).growth == initial);
  CHECK(budget.used() == 1024 * kib);
  // B's next doubling (512 KiB) does not fit: no growth, though the sample limits.
  auto refused = b.sample(fast, rtt);
  CHECK(refused.sampled);
  CHECK(refused.growth == 0);
  CHECK(b.window.size == 2 * initial);
  // A ends (the multiplexer releases a stream's window as it removes it): 768 KiB come back.
  first_session.release(a.window);
  CHECK(a.window.size == initial);
  CHECK(budget.used() == initial);
  CHECK(b.sample(fast, rtt).growth == 2 * initial);
  CHECK(budget.used() == 3 * initial);
  // Releasing a window that never grew, or one already released, gives nothing back.
  first_session.release(a.window);
  stream_under_test c(first_session, start);
  first_session.release(c.window);
  CHECK(budget.used() == 3 * initial);
  second_session.release(b.window);
  CHECK(budget.used() == 0);
}

TEST_CASE("a sample shorter than max(min RTT, 2 ms) is not judged", "[window]") {
  net::window_budget budget;
  net::window_tuner tuner(initial, cap, budget);
  const auto start = clock_type::now();
  SECTION("shorter than the minimum round trip") {
    stream_under_test s(tuner, start);
    auto early = s.sample(8 * 1024 * kib, rtt - 1ms);  // a burst, however large
    CHECK_FALSE(early.sampled);
    CHECK(early.growth == 0);
    CHECK(s.window.size == initial);
    // The sample runs on and the burst's bytes still count once it is long enough (100 KiB
    // alone over a round trip would leave the window as it is).
    auto later = s.sample(100 * kib, 1ms);
    CHECK(later.sampled);
    CHECK(later.growth == initial);
    tuner.release(s.window);
  }
  SECTION("shorter than 2 ms on a link with a shorter round trip") {
    net::stream_window w = tuner.open(start);
    w.delivered(fast);
    // Min RTT 100 us: 1.9 ms is many round trips but less than 2 ms.
    CHECK_FALSE(tuner.end_sample(w, 100us, false, start + 1900us).sampled);
    CHECK(w.size == initial);
    // 64 MiB over 2 ms times 100 us is 3.2 MiB: the window limits.
    auto o = tuner.end_sample(w, 100us, false, start + 2ms);
    CHECK(o.sampled);
    CHECK(o.growth == initial);
    tuner.release(w);
  }
  SECTION("no round trip measured yet") {
    net::stream_window w = tuner.open(start);
    w.delivered(fast);
    CHECK_FALSE(tuner.end_sample(w, 0us, false, start + 1s).sampled);
    CHECK(w.size == initial);
  }
  CHECK(budget.used() == 0);
}
