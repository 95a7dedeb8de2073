// control_link over a real loopback socket, against a raw peer that reads and writes frames
// itself: frames in order both ways, PINGs answered and never handed on, heartbeats sent and a
// silent peer dropped, a PING flood or a malformed frame refused with an ERROR, the peer's end or
// reset, and an ERROR of our own flushed before the FIN. on_closed fires exactly once.
#include "shared/protocol/control_link.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "tests/support/loopback_pair.hpp"
#include "tests/support/run_coroutine.hpp"

namespace asio = boost::asio;
namespace net = culvert::shared::net;
namespace proto = culvert::shared::protocol;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;
using culvert::tests::loopback_pair;
using culvert::tests::run_coroutine;

namespace {

using bytes = std::vector<std::uint8_t>;

// A link on one end of a loopback connection, started, and the raw peer on the other end. The
// hooks only record: checks run after the io_context, never inside a hook.
struct link_and_peer {
  asio::io_context io;
  std::shared_ptr<proto::control_link> link;
  std::unique_ptr<net::transport> peer;
  std::vector<proto::frame> frames;   // what on_frame received
  std::vector<std::string> closings;  // every on_closed reason

  // By default no heartbeat comes during a test.
  explicit link_and_peer(std::chrono::milliseconds interval = 10s,
                         std::chrono::milliseconds silence_limit = 30s) {
    auto [ours, theirs] = loopback_pair(io);
    link = std::make_shared<proto::control_link>(net::transport(std::move(ours)), interval,
                                                 silence_limit);
    link->set_hooks({.on_frame = [this](proto::frame&& f) { frames.push_back(std::move(f)); },
                     .on_closed = [this](const std::string& why) { closings.push_back(why); }});
    link->start();
    peer = std::make_unique<net::transport>(std::move(theirs));
  }

  // Runs `work` (the peer's side) and then everything left, until the link has stopped.
  void run(asio::awaitable<void> work) { run_coroutine(io, std::move(work)); }
};

bytes ping(std::uint8_t flags, std::uint8_t fill) {
  bytes out(proto::header_size + 8, fill);
  proto::encode_header({8, proto::frame_type::ping, flags, 0},
                       std::span<std::uint8_t, proto::header_size>(out.data(), proto::header_size));
  return out;
}

// The peer writes one frame. Frames are built into named variables before a co_await: GCC 12
// destroys some temporaries of a co_await expression twice (an ERROR's message string).
asio::awaitable<void> peer_sends(net::transport& peer, const bytes& frame) {
  auto ec = co_await proto::write_frame(peer, frame);
  REQUIRE_FALSE(ec);
}

// The peer's next frame, or a failed test (after 2 s at most).
asio::awaitable<proto::frame> next_frame(net::transport& peer) {
  auto result = co_await proto::read_frame(peer, 2s);
  auto* failure = std::get_if<proto::read_failure>(&result);
  INFO((failure ? failure->what : std::string()));
  REQUIRE(failure == nullptr);
  co_return std::get<proto::frame>(std::move(result));
}

// The peer's next frame that is not a heartbeat PING from the link.
asio::awaitable<proto::frame> next_non_ping(net::transport& peer) {
  for (;;) {
    auto f = co_await next_frame(peer);
    if (f.header.type != proto::frame_type::ping || (f.header.flags & proto::flags::ack))
      co_return f;
  }
}

// The peer reads until the link's end: returns every ERROR the link sent before it.
asio::awaitable<std::vector<proto::error_message>> errors_until_end(net::transport& peer) {
  std::vector<proto::error_message> errors;
  for (;;) {
    auto result = co_await proto::read_frame(peer, 3s);
    if (auto* failure = std::get_if<proto::read_failure>(&result)) {
      REQUIRE(failure->why == proto::read_failure::kind::closed);
      co_return errors;
    }
    auto& f = std::get<proto::frame>(result);
    if (f.header.type != proto::frame_type::error) continue;
    auto e = proto::decode_error_message(f.payload);
    REQUIRE(e);
    errors.push_back(*e);
  }
}

asio::awaitable<void> pause(std::chrono::milliseconds how_long) {
  asio::steady_timer timer(co_await asio::this_coro::executor, how_long);
  co_await timer.async_wait(asio::use_awaitable);
}

}  // namespace

TEST_CASE("control_link carries frames in order both ways", "[control_link]") {
  link_and_peer t;
  const auto first = proto::encode_empty(proto::frame_type::reopen);
  const auto second = proto::encode(proto::error_message{proto::error_code::internal, "two"});
  t.run([&]() -> asio::awaitable<void> {
    t.link->send(first);
    t.link->send(second);
    auto a = co_await next_non_ping(*t.peer);
    auto b = co_await next_non_ping(*t.peer);
    CHECK(a.header.type == proto::frame_type::reopen);
    CHECK(b.header.type == proto::frame_type::error);
    CHECK(proto::decode_error_message(b.payload)->message == "two");

    const auto ack = proto::encode_empty(proto::frame_type::ack);
    const auto error = proto::encode(proto::error_message{proto::error_code::bad_token, "three"});
    co_await peer_sends(*t.peer, ack);
    co_await peer_sends(*t.peer, error);
    co_await peer_sends(*t.peer, first);
    while (t.frames.size() < 3) co_await pause(5ms);
    t.link->close("done");
  }());
  REQUIRE(t.frames.size() == 3);
  CHECK(t.frames[0].header.type == proto::frame_type::ack);
  CHECK(t.frames[1].header.type == proto::frame_type::error);
  CHECK(t.frames[2].header.type == proto::frame_type::reopen);
  CHECK(t.closings == std::vector<std::string>{"done"});
  CHECK_FALSE(t.link->is_open());
}

TEST_CASE("control_link answers a PING with its payload and hands on neither", "[control_link]") {
  link_and_peer t;
  t.run([&]() -> asio::awaitable<void> {
    const auto request = ping(proto::flags::none, 0x42);
    const auto answer = ping(proto::flags::ack, 0x43);
    const auto ack = proto::encode_empty(proto::frame_type::ack);
    co_await peer_sends(*t.peer, request);
    auto echo = co_await next_non_ping(*t.peer);
    CHECK(echo.header.type == proto::frame_type::ping);
    CHECK(echo.header.flags == proto::flags::ack);
    CHECK(echo.payload == bytes(8, 0x42));
    // An echo of the link's own PING is proof of life, nothing more: no answer, not handed on.
    co_await peer_sends(*t.peer, answer);
    co_await peer_sends(*t.peer, ack);
    while (t.frames.empty()) co_await pause(5ms);
    t.link->close("done");
    auto rest = co_await proto::read_frame(*t.peer, 2s);
    CHECK(std::holds_alternative<proto::read_failure>(rest));  // nothing answered the echo
  }());
  REQUIRE(t.frames.size() == 1);
  CHECK(t.frames[0].header.type == proto::frame_type::ack);
}

TEST_CASE("control_link sends heartbeats and drops a peer that stays silent", "[control_link]") {
  link_and_peer t(50ms, 300ms);
  const auto started = clock_type::now();
  t.run([&]() -> asio::awaitable<void> {
    auto heartbeat = co_await next_frame(*t.peer);
    CHECK(heartbeat.header.type == proto::frame_type::ping);
    CHECK(heartbeat.header.flags == proto::flags::none);
    CHECK(heartbeat.payload.size() == 8);
    // Never answer: the link gives up after its silence limit and closes.
    for (;;) {
      auto result = co_await proto::read_frame(*t.peer, 2s);
      if (std::holds_alternative<proto::read_failure>(result)) {
        CHECK(std::get<proto::read_failure>(result).why == proto::read_failure::kind::closed);
        co_return;
      }
    }
  }());
  const auto took = clock_type::now() - started;
  CHECK(took >= 300ms);
  CHECK(took < 2s);
  REQUIRE(t.closings.size() == 1);
  CHECK_THAT(t.closings[0], Catch::StartsWith("heartbeat timeout: nothing received for"));
}

TEST_CASE("control_link counts any frame as proof of life", "[control_link]") {
  link_and_peer t(50ms, 300ms);
  t.run([&]() -> asio::awaitable<void> {
    // Two silence limits' worth of ACKs every 50 ms (never an answer to a PING): still open.
    const auto ack = proto::encode_empty(proto::frame_type::ack);
    for (int i = 0; i < 12; ++i) {
      co_await peer_sends(*t.peer, ack);
      co_await pause(50ms);
    }
    CHECK(t.link->is_open());
    t.link->close("done");
  }());
  CHECK(t.closings == std::vector<std::string>{"done"});
  CHECK(t.frames.size() == 12);
}

// After refusing what it read, the link stops reading: the heartbeat interval's timer, not the
// peer's end, closes it. A short interval keeps these tests short.
constexpr auto refusal_interval = 100ms;

TEST_CASE("control_link refuses a PING flood with an ERROR", "[control_link]") {
  link_and_peer t(refusal_interval);
  std::vector<proto::error_message> errors;
  t.run([&]() -> asio::awaitable<void> {
    for (int i = 0; i < 21; ++i) {  // one more than the 20 a second allowed
      const auto request = ping(proto::flags::none, std::uint8_t(i));
      co_await peer_sends(*t.peer, request);
    }
    errors = co_await errors_until_end(*t.peer);
    t.peer->close();
  }());
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].code == proto::error_code::protocol_error);
  CHECK(errors[0].message == "PING flood");
  CHECK(t.closings == std::vector<std::string>{"error sent"});
}

TEST_CASE("control_link refuses a malformed or oversized frame with an ERROR", "[control_link]") {
  const auto row = GENERATE(table<bytes, std::string>({
      {bytes{0, 0, 0, 0, 0x7f, 0, 0, 0, 0, 0}, "unknown frame type"},
      // A DATA header within DATA's limit but past any control frame's: refused at the header.
      {bytes{0, 0, 0x10, 0, 0x11, 0, 0, 0, 0, 1},
       "DATA frame of 4096 bytes, more than the 2048 allowed here"},
  }));
  link_and_peer t(refusal_interval);
  std::vector<proto::error_message> errors;
  t.run([&]() -> asio::awaitable<void> {
    co_await t.peer->write(asio::buffer(std::get<0>(row)));
    errors = co_await errors_until_end(*t.peer);
    t.peer->close();
  }());
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].code == proto::error_code::protocol_error);
  CHECK(errors[0].message == std::get<1>(row));
  CHECK(t.frames.empty());
  CHECK(t.closings == std::vector<std::string>{"error sent"});
}

TEST_CASE("control_link reports the peer's end and a reset once", "[control_link]") {
  SECTION("end") {
    link_and_peer t;
    t.run([&]() -> asio::awaitable<void> {
      t.peer->socket().shutdown(asio::ip::tcp::socket::shutdown_send);
      co_return;
    }());
    CHECK(t.closings == std::vector<std::string>{"connection closed by peer"});
    CHECK_FALSE(t.link->is_open());
  }
  SECTION("reset") {
    link_and_peer t;
    t.run([&]() -> asio::awaitable<void> {
      t.peer->socket().set_option(asio::socket_base::linger(true, 0));
      t.peer->close();
      co_return;
    }());
    REQUIRE(t.closings.size() == 1);
    CHECK_THAT(t.closings[0], Catch::StartsWith("connection lost: ") && Catch::Contains("reset"));
  }
}

TEST_CASE("control_link flushes its ERROR before the FIN, and sends nothing after",
          "[control_link]") {
  link_and_peer t;
  std::vector<proto::error_message> errors;
  t.run([&]() -> asio::awaitable<void> {
    t.link->send(proto::encode_empty(proto::frame_type::reopen));
    t.link->close_with_error(proto::error_code::shutting_down, "bye");
    CHECK(t.link->closing());
    t.link->send(proto::encode_empty(proto::frame_type::reopen));    // dropped: closing
    t.link->close_with_error(proto::error_code::internal, "again");  // ignored
    auto first = co_await next_non_ping(*t.peer);
    CHECK(first.header.type == proto::frame_type::reopen);
    errors = co_await errors_until_end(*t.peer);  // and then the link's FIN
    t.peer->close();
  }());
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].code == proto::error_code::shutting_down);
  CHECK(errors[0].message == "bye");
  CHECK(t.closings == std::vector<std::string>{"error sent"});
}

TEST_CASE("control_link closes after an ERROR even when the peer never reads or closes",
          "[control_link]") {
  link_and_peer t(100ms, 5000ms);
  const auto started = clock_type::now();
  t.run([&]() -> asio::awaitable<void> {
    t.link->close_with_error(proto::error_code::shutting_down, "bye");
    co_return;  // the peer stays connected and silent
  }());
  const auto took = clock_type::now() - started;
  CHECK(took >= 100ms);  // one heartbeat interval to take the frame
  CHECK(took < 2s);
  CHECK(t.closings == std::vector<std::string>{"error sent"});
}

TEST_CASE("control_link's close is final and reported once", "[control_link]") {
  link_and_peer t;
  t.run([&]() -> asio::awaitable<void> {
    t.link->close("first");
    t.link->close("second");
    t.link->send(proto::encode_empty(proto::frame_type::reopen));
    t.link->close_with_error(proto::error_code::internal, "late");
    auto result = co_await proto::read_frame(*t.peer, 2s);  // nothing came before the end
    auto* failure = std::get_if<proto::read_failure>(&result);
    REQUIRE(failure != nullptr);
    CHECK(failure->why == proto::read_failure::kind::closed);
  }());
  CHECK(t.closings == std::vector<std::string>{"first"});
  CHECK_FALSE(t.link->is_open());
}
