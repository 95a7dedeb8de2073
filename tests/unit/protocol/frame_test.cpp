// Frame header codec: round trips for every type, and every malformed header rejected before
// any payload is read.
#include "shared/protocol/frame.hpp"

#include <catch2/catch.hpp>

namespace proto = culvert::shared::protocol;
using proto::decode_error;
using proto::frame_type;

namespace {

std::array<std::uint8_t, proto::header_size> raw_header(std::uint32_t length, std::uint8_t type,
                                                        std::uint8_t flags, std::uint32_t stream) {
  std::array<std::uint8_t, proto::header_size> out{};
  proto::store_u32(out.data(), length);
  out[4] = type;
  out[5] = flags;
  proto::store_u32(out.data() + 6, stream);
  return out;
}

std::variant<proto::frame_header, decode_error> decode(const std::array<std::uint8_t, 10>& h) {
  return proto::decode_header(std::span<const std::uint8_t, proto::header_size>(h));
}

decode_error error_of(std::uint32_t length, std::uint8_t type, std::uint8_t flags,
                      std::uint32_t stream) {
  auto result = decode(raw_header(length, type, flags, stream));
  REQUIRE(std::holds_alternative<decode_error>(result));
  return std::get<decode_error>(result);
}

}  // namespace

TEST_CASE("frame headers round-trip for every type", "[frame]") {
  struct sample {
    frame_type type;
    std::uint32_t length;
    std::uint8_t flags;
    std::uint32_t stream;
  };
  const sample samples[] = {
      {frame_type::init, 40, 0, 0},
      {frame_type::domain, 100, 0, 0},
      {frame_type::ack, 0, 0, 0},
      {frame_type::error, 30, 0, 0},
      {frame_type::ping, 8, proto::flags::ack, 0},
      {frame_type::ping, 8, 0, 0},
      {frame_type::data_init, 42, 0, 0},
      {frame_type::data_ready, 0, 0, 0},
      {frame_type::reopen, 0, 0, 0},
      {frame_type::data_route, 34, 0, 0},
      {frame_type::open, 20, 0, 7},
      {frame_type::data, 65536, proto::flags::fin, 0xFFFFFFFF},
      {frame_type::data, 1048576, 0, 3},  // max_data_payload, the wire limit in protocol.md
      {frame_type::data, 0, proto::flags::fin, 1},
      {frame_type::window, 4, 0, 3},
      {frame_type::reset, 4, 0, 9},
  };
  for (const auto& s : samples) {
    proto::frame_header h{s.length, s.type, s.flags, s.stream};
    auto bytes = proto::encode_header(h);
    CHECK(bytes == raw_header(s.length, std::uint8_t(s.type), s.flags, s.stream));
    auto decoded = decode(bytes);
    REQUIRE(std::holds_alternative<proto::frame_header>(decoded));
    const auto& d = std::get<proto::frame_header>(decoded);
    CHECK(d.length == s.length);
    CHECK(d.type == s.type);
    CHECK(d.flags == s.flags);
    CHECK(d.stream_id == s.stream);
  }
}

TEST_CASE("malformed frame headers are rejected", "[frame]") {
  SECTION("unknown types") {
    for (int type : {0x00, 0x0A, 0x0F, 0x14, 0x7E, 0xFF})
      CHECK(error_of(0, std::uint8_t(type), 0, 0) == decode_error::unknown_type);
  }
  SECTION("oversized lengths, per type") {
    CHECK(error_of(0xFFFFFFFF, 0x11, 0, 1) == decode_error::too_long);
    CHECK(error_of(proto::max_data_payload + 1, 0x11, 0, 1) == decode_error::too_long);
    CHECK(error_of(513, 0x01, 0, 0) == decode_error::too_long);   // INIT
    CHECK(error_of(1025, 0x04, 0, 0) == decode_error::too_long);  // ERROR
    CHECK(error_of(129, 0x10, 0, 5) == decode_error::too_long);   // OPEN
  }
  SECTION("fixed-size frames of the wrong size") {
    CHECK(error_of(1, 0x03, 0, 0) == decode_error::bad_fixed_size);   // ACK
    CHECK(error_of(7, 0x05, 0, 0) == decode_error::bad_fixed_size);   // PING
    CHECK(error_of(41, 0x06, 0, 0) == decode_error::bad_fixed_size);  // DATA_INIT
    CHECK(error_of(8, 0x12, 0, 1) == decode_error::bad_fixed_size);   // WINDOW
    CHECK(error_of(0, 0x13, 0, 1) == decode_error::bad_fixed_size);   // RESET
  }
  SECTION("flags a type does not define") {
    CHECK(error_of(40, 0x01, 0x01, 0) == decode_error::bad_flags);
    CHECK(error_of(8, 0x05, 0x02, 0) == decode_error::bad_flags);
    CHECK(error_of(10, 0x11, 0x80, 1) == decode_error::bad_flags);
    CHECK(error_of(4, 0x12, 0x01, 1) == decode_error::bad_flags);
  }
  SECTION("stream ids where they do not belong") {
    CHECK(error_of(10, 0x11, 0, 0) == decode_error::stream_id_required);
    CHECK(error_of(4, 0x12, 0, 0) == decode_error::stream_id_required);
    CHECK(error_of(8, 0x05, 0, 1) == decode_error::stream_id_forbidden);
    CHECK(error_of(40, 0x01, 0, 3) == decode_error::stream_id_forbidden);
  }
  SECTION("every decode error has a message") {
    for (auto e : {decode_error::unknown_type, decode_error::bad_flags, decode_error::too_long,
                   decode_error::bad_fixed_size, decode_error::stream_id_required,
                   decode_error::stream_id_forbidden})
      CHECK_FALSE(proto::to_string(e).empty());
  }
}

TEST_CASE("random headers never decode to something outside the rules", "[frame]") {
  std::uint64_t state = 0x9E3779B97F4A7C15ULL;
  auto next = [&] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  int accepted = 0;
  for (int i = 0; i < 200000; ++i) {
    std::array<std::uint8_t, proto::header_size> h;
    auto a = next(), b = next();
    for (int k = 0; k < 8; ++k) h[k] = std::uint8_t(a >> (8 * k));
    h[8] = std::uint8_t(b);
    h[9] = std::uint8_t(b >> 8);
    if (i % 2) h[0] = h[1] = 0;  // half of them with plausible lengths
    auto decoded = decode(h);
    if (auto* f = std::get_if<proto::frame_header>(&decoded)) {
      ++accepted;
      const bool data = f->type == frame_type::data;
      CHECK(f->length <= (data ? proto::max_data_payload : proto::max_control_payload));
    }
  }
  CHECK(accepted < 2000);  // random bytes are almost never a valid header
}
