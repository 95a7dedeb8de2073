// read_frame's per-call limits over a real loopback socket: a header announcing a type or a
// length the caller did not allow is refused at once, before its payload is read or allocated
// (the peer sends the header alone and stays connected, so waiting for the payload would time out).
#include "shared/protocol/frame_io.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/asio/write.hpp>
#include <catch2/catch.hpp>
#include <chrono>

#include "tests/support/loopback_pair.hpp"

namespace asio = boost::asio;
namespace net = culvert::shared::net;
namespace proto = culvert::shared::protocol;
using asio::ip::tcp;

namespace {

using culvert::tests::loopback_pair;

// Sends `header` (and nothing else) from one end, reads a frame on the other with `limits` and a
// 3 s deadline; returns the outcome and how long the read took.
std::pair<proto::read_result, std::chrono::steady_clock::duration> read_after(
    const proto::frame_header& header, proto::frame_limits limits) {
  asio::io_context io;
  auto [writer, reader] = loopback_pair(io);
  const auto bytes = proto::encode_header(header);
  asio::write(writer, asio::buffer(bytes));
  net::transport stream(std::move(reader));
  const auto started = std::chrono::steady_clock::now();
  auto result = asio::co_spawn(io, proto::read_frame(stream, std::chrono::seconds(3), limits),
                               asio::use_future);
  io.run();
  return {result.get(), std::chrono::steady_clock::now() - started};
}

}  // namespace

TEST_CASE("read_frame refuses a payload longer than the call allows at the header",
          "[frame][frame_io]") {
  const proto::frame_header data{proto::max_data_payload, proto::frame_type::data, 0, 1};
  auto [result, took] = read_after(data, {.max_payload = proto::max_control_payload});
  auto* failure = std::get_if<proto::read_failure>(&result);
  REQUIRE(failure != nullptr);
  CHECK(failure->why == proto::read_failure::kind::malformed);
  CHECK_THAT(failure->what, Catch::Contains("1048576 bytes"));
  CHECK(took < std::chrono::seconds(1));  // did not wait for (or make room for) the payload
}

TEST_CASE("read_frame refuses a type the call does not accept at the header", "[frame][frame_io]") {
  constexpr proto::frame_type handshake[] = {proto::frame_type::init, proto::frame_type::data_init};
  const proto::frame_header data{proto::max_data_payload, proto::frame_type::data, 0, 1};
  auto [result, took] = read_after(data, {.accepted = handshake});
  auto* failure = std::get_if<proto::read_failure>(&result);
  REQUIRE(failure != nullptr);
  CHECK(failure->why == proto::read_failure::kind::malformed);
  CHECK(failure->what == "unexpected DATA frame");
  CHECK(took < std::chrono::seconds(1));
}

TEST_CASE("read_frame within its limits still waits for the whole payload", "[frame][frame_io]") {
  constexpr proto::frame_type handshake[] = {proto::frame_type::init};
  const proto::frame_header init{40, proto::frame_type::init, 0, 0};
  auto [result, took] =
      read_after(init, {.max_payload = proto::max_control_payload, .accepted = handshake});
  auto* failure = std::get_if<proto::read_failure>(&result);
  REQUIRE(failure != nullptr);
  CHECK(failure->why == proto::read_failure::kind::timed_out);  // the 40 bytes never came
}
