// read_frame, write_frame and refuse over a real loopback socket: a header announcing a type or a
// length the caller did not allow, or one decode_header rejects, is refused at once, before its
// payload is read or allocated (the peer sends the header alone and stays connected, so waiting
// for the payload would time out); a frame cut short by the peer's end is malformed, a reset is
// an I/O error, and exactly one frame's bytes are consumed per read.
#include "shared/protocol/frame_io.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <vector>

#include "tests/support/loopback_pair.hpp"
#include "tests/support/run_coroutine.hpp"

namespace asio = boost::asio;
namespace net = culvert::shared::net;
namespace proto = culvert::shared::protocol;
using asio::ip::tcp;
using namespace std::chrono_literals;
using culvert::tests::loopback_pair;
using culvert::tests::run_coroutine;

namespace {

using clock_type = std::chrono::steady_clock;
using bytes = std::vector<std::uint8_t>;

// What the writing end does once its bytes are sent.
enum class then { stay_open, close, reset };

struct outcome {
  proto::read_result result;
  clock_type::duration took;

  const proto::read_failure& failure() const {
    const auto* f = std::get_if<proto::read_failure>(&result);
    REQUIRE(f != nullptr);
    return *f;
  }
  const proto::frame& frame() const {
    const auto* f = std::get_if<proto::frame>(&result);
    REQUIRE(f != nullptr);
    return *f;
  }
};

bytes header_bytes(const proto::frame_header& header) {
  const auto h = proto::encode_header(header);
  return bytes(h.begin(), h.end());
}

// Sends `sent` from one end, then does `next`; reads one frame on the other with `limits` and
// `deadline`; returns the outcome and how long the read took.
outcome read_after(const bytes& sent, then next, proto::frame_limits limits = {},
                   clock_type::duration deadline = 3s) {
  asio::io_context io;
  auto [writer, reader] = loopback_pair(io);
  if (!sent.empty()) asio::write(writer, asio::buffer(sent));
  if (next == then::reset) writer.set_option(asio::socket_base::linger(true, 0));
  if (next != then::stay_open) writer.close();
  net::transport stream(std::move(reader));
  const auto started = clock_type::now();
  auto result = run_coroutine(io, proto::read_frame(stream, deadline, limits));
  return {std::move(result), clock_type::now() - started};
}

outcome read_after(const proto::frame_header& header, proto::frame_limits limits,
                   clock_type::duration deadline = 3s) {
  return read_after(header_bytes(header), then::stay_open, limits, deadline);
}

// A header that decode_header itself refuses, whatever the caller allows.
std::string refused_header(const bytes& header) {
  const auto got = read_after(header, then::stay_open);
  CHECK(got.failure().why == proto::read_failure::kind::malformed);
  CHECK(got.took < 1s);  // at the header: no payload awaited
  return got.failure().what;
}

}  // namespace

TEST_CASE("read_frame refuses a payload longer than the call allows at the header",
          "[frame][frame_io]") {
  const proto::frame_header data{proto::max_data_payload, proto::frame_type::data, 0, 1};
  auto got = read_after(data, {.max_payload = proto::max_control_payload});
  CHECK(got.failure().why == proto::read_failure::kind::malformed);
  CHECK_THAT(got.failure().what, Catch::Contains("1048576 bytes"));
  CHECK(got.took < 1s);  // did not wait for (or make room for) the payload
}

TEST_CASE("read_frame refuses a type the call does not accept at the header", "[frame][frame_io]") {
  constexpr proto::frame_type handshake[] = {proto::frame_type::init, proto::frame_type::data_init};
  const proto::frame_header data{proto::max_data_payload, proto::frame_type::data, 0, 1};
  auto got = read_after(data, {.accepted = handshake});
  CHECK(got.failure().why == proto::read_failure::kind::malformed);
  CHECK(got.failure().what == "unexpected DATA frame");
  CHECK(got.took < 1s);
}

TEST_CASE("read_frame within its limits still waits for the whole payload", "[frame][frame_io]") {
  constexpr proto::frame_type handshake[] = {proto::frame_type::init};
  const proto::frame_header init{40, proto::frame_type::init, 0, 0};
  auto got =
      read_after(init, {.max_payload = proto::max_control_payload, .accepted = handshake}, 200ms);
  CHECK(got.failure().why == proto::read_failure::kind::timed_out);  // the 40 bytes never came
  CHECK(got.failure().what == "timed out");
  CHECK(got.took >= 200ms);
}

TEST_CASE("read_frame's payload limit is inclusive", "[frame][frame_io]") {
  const proto::frame_header open{40, proto::frame_type::open, 0, 7};
  bytes sent = header_bytes(open);
  sent.resize(sent.size() + 40, 0x5a);
  auto at_limit = read_after(sent, then::stay_open, {.max_payload = 40});
  CHECK(at_limit.frame().header.stream_id == 7);
  CHECK(at_limit.frame().payload == bytes(40, 0x5a));

  auto over = read_after(sent, then::stay_open, {.max_payload = 39});
  CHECK(over.failure().why == proto::read_failure::kind::malformed);
  CHECK(over.failure().what == "OPEN frame of 40 bytes, more than the 39 allowed here");
}

TEST_CASE("read_frame refuses what decode_header refuses, before any payload",
          "[frame][frame_io]") {
  // Type 0x7f does not exist.
  CHECK(refused_header({0, 0, 0, 0, 0x7f, 0, 0, 0, 0, 0}) == "unknown frame type");
  // An INIT past its own maximum (512), whatever the caller allows.
  CHECK(refused_header(header_bytes({600, proto::frame_type::init, 0, 0})) ==
        "frame longer than the maximum for its type");
  // A DATA frame past 1 MiB, even with the default limits.
  CHECK(refused_header(header_bytes(
            {std::uint32_t(proto::max_data_payload + 1), proto::frame_type::data, 0, 1})) ==
        "frame longer than the maximum for its type");
  // A PING is 8 bytes exactly.
  CHECK(refused_header(header_bytes({4, proto::frame_type::ping, 0, 0})) ==
        "frame of the wrong fixed size");
  // INIT has no flags; DATA needs a stream id; INIT must not have one.
  CHECK(refused_header(header_bytes({10, proto::frame_type::init, 0x01, 0})) ==
        "unknown flags set");
  CHECK(refused_header(header_bytes({10, proto::frame_type::data, 0, 0})) ==
        "stream id 0 on a stream frame");
  CHECK(refused_header(header_bytes({10, proto::frame_type::init, 0, 5})) ==
        "stream id on a connection frame");
}

TEST_CASE("read_frame tells a clean end from a frame cut short", "[frame][frame_io]") {
  SECTION("the peer's end before any byte: closed") {
    auto got = read_after({}, then::close);
    CHECK(got.failure().why == proto::read_failure::kind::closed);
    CHECK(got.failure().what == "connection closed");
  }
  SECTION("the peer's end inside the header: truncated") {
    auto got = read_after({0, 0, 0, 8, 0x05}, then::close);
    CHECK(got.failure().why == proto::read_failure::kind::malformed);
    CHECK(got.failure().what == "truncated frame");
  }
  SECTION("the peer's end inside the payload: truncated") {
    bytes sent = header_bytes({40, proto::frame_type::init, 0, 0});
    sent.resize(sent.size() + 10, 1);
    auto got = read_after(sent, then::close);
    CHECK(got.failure().why == proto::read_failure::kind::malformed);
    CHECK(got.failure().what == "truncated frame");
  }
  SECTION("a reset inside the header: an I/O error") {
    auto got = read_after({0, 0, 0}, then::reset);
    CHECK(got.failure().why == proto::read_failure::kind::io_error);
    CHECK_THAT(got.failure().what, Catch::Contains("reset"));
  }
  SECTION("a reset inside the payload: an I/O error") {
    bytes sent = header_bytes({40, proto::frame_type::init, 0, 0});
    sent.resize(sent.size() + 10, 1);
    auto got = read_after(sent, then::reset);
    CHECK(got.failure().why == proto::read_failure::kind::io_error);
  }
}

TEST_CASE("read_frame consumes exactly one frame and nothing after it", "[frame][frame_io]") {
  asio::io_context io;
  auto [writer, reader] = loopback_pair(io);
  const proto::error_message refusal{proto::error_code::bad_token, "no such token"};
  bytes sent = proto::encode(refusal);
  const auto ack = proto::encode_empty(proto::frame_type::ack);  // no payload at all
  sent.insert(sent.end(), ack.begin(), ack.end());
  const bytes after = {'r', 'e', 's', 't'};  // not a frame: what the next owner reads
  sent.insert(sent.end(), after.begin(), after.end());
  asio::write(writer, asio::buffer(sent));

  net::transport stream(std::move(reader));
  auto first = run_coroutine(io, proto::read_frame(stream));
  auto* error = std::get_if<proto::frame>(&first);
  REQUIRE(error != nullptr);
  CHECK(error->header.type == proto::frame_type::error);
  const auto decoded = proto::decode_error_message(error->payload);
  REQUIRE(decoded);
  CHECK(decoded->code == proto::error_code::bad_token);
  CHECK(decoded->message == "no such token");

  auto second = run_coroutine(io, proto::read_frame(stream));
  auto* empty = std::get_if<proto::frame>(&second);
  REQUIRE(empty != nullptr);
  CHECK(empty->header.type == proto::frame_type::ack);
  CHECK(empty->payload.empty());

  bytes rest(after.size());
  asio::read(stream.socket(), asio::buffer(rest));
  CHECK(rest == after);
}

TEST_CASE("write_frame's bytes read back as the same frame", "[frame][frame_io]") {
  asio::io_context io;
  auto [a, b] = loopback_pair(io);
  net::transport out(std::move(a)), in(std::move(b));
  const auto frame = proto::encode(proto::error_message{proto::error_code::overloaded, "busy"});
  CHECK_FALSE(run_coroutine(io, proto::write_frame(out, frame)));
  auto got = run_coroutine(io, proto::read_frame(in, {.max_payload = proto::max_control_payload}));
  auto* f = std::get_if<proto::frame>(&got);
  REQUIRE(f != nullptr);
  bytes again = header_bytes(f->header);
  again.insert(again.end(), f->payload.begin(), f->payload.end());
  CHECK(again == frame);

  out.close();
  CHECK(run_coroutine(io, proto::write_frame(out, frame)));  // a closed transport: an error
}

TEST_CASE("refuse sends an ERROR, drains the peer's bytes and closes without a reset",
          "[frame][frame_io]") {
  asio::io_context io;
  auto [server_end, peer] = loopback_pair(io);
  // The peer has sent bytes the server never reads as frames, then its end: closing with them
  // unread would reset the connection, and a reset can destroy the ERROR before it is read.
  const bytes junk(3000, 0xee);
  asio::write(peer, asio::buffer(junk));
  peer.shutdown(tcp::socket::shutdown_send);

  net::transport stream(std::move(server_end));
  const auto started = clock_type::now();
  run_coroutine(io, proto::refuse(stream, proto::error_code::protocol_error, "go away"));
  CHECK(clock_type::now() - started < 1s);  // the peer's FIN ended the drain, not the timer

  bytes received;
  boost::system::error_code ec;
  asio::read(peer, asio::dynamic_buffer(received), ec);
  CHECK(ec == asio::error::eof);  // a FIN, not a reset
  const auto expected =
      proto::encode(proto::error_message{proto::error_code::protocol_error, "go away"});
  CHECK(received == expected);
}
