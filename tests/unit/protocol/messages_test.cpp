// Handshake payload codecs: round trips, and truncated, padded or out-of-range payloads rejected.
#include "shared/protocol/messages.hpp"

#include <catch2/catch.hpp>

namespace proto = culvert::shared::protocol;

namespace {

// The payload part of an encoded frame, after checking its header agrees with it.
std::vector<std::uint8_t> payload_of(const proto::encoded_frame& frame, proto::frame_type type) {
  REQUIRE(frame.size() >= proto::header_size);
  auto decoded = proto::decode_header(
      std::span<const std::uint8_t, proto::header_size>(frame.data(), proto::header_size));
  REQUIRE(std::holds_alternative<proto::frame_header>(decoded));
  const auto& h = std::get<proto::frame_header>(decoded);
  CHECK(h.type == type);
  CHECK(h.length == frame.size() - proto::header_size);
  return {frame.begin() + proto::header_size, frame.end()};
}

proto::secret_bytes sample_secret() {
  proto::secret_bytes s;
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = std::uint8_t(i * 7 + 1);
  return s;
}

// Every strict prefix of a valid payload must be refused.
template <typename Decode>
void check_truncations_rejected(const std::vector<std::uint8_t>& payload, Decode decode) {
  for (std::size_t n = 0; n < payload.size(); ++n) {
    INFO("prefix of " << n << " bytes");
    CHECK_FALSE(decode(std::span<const std::uint8_t>(payload.data(), n)));
  }
  auto padded = payload;
  padded.push_back(0);
  CHECK_FALSE(decode(std::span<const std::uint8_t>(padded)));  // trailing garbage
}

}  // namespace

TEST_CASE("INIT round-trips and rejects malformed payloads", "[messages]") {
  proto::init_message m;
  m.kind = proto::tunnel_kind::tcp;
  m.token = "t0ken";
  m.subdomain = "my-app";
  m.reclaim = proto::reclaim_request{0x0102030405060708ULL, sample_secret()};
  auto payload = payload_of(proto::encode(m), proto::frame_type::init);
  auto back = proto::decode_init(payload);
  REQUIRE(back);
  CHECK(back->version == proto::protocol_version);
  CHECK(back->kind == proto::tunnel_kind::tcp);
  CHECK(back->token == "t0ken");
  CHECK(back->subdomain == "my-app");
  REQUIRE(back->reclaim);
  CHECK(back->reclaim->tunnel_id == 0x0102030405060708ULL);
  CHECK(back->reclaim->secret == sample_secret());

  check_truncations_rejected(payload, proto::decode_init);
  SECTION("no reclaim, empty strings") {
    proto::init_message plain;
    auto p = payload_of(proto::encode(plain), proto::frame_type::init);
    auto d = proto::decode_init(p);
    REQUIRE(d);
    CHECK(d->token.empty());
    CHECK_FALSE(d->reclaim);
    check_truncations_rejected(p, proto::decode_init);
  }
  SECTION("unknown tunnel kind") {
    payload[2] = 9;
    CHECK_FALSE(proto::decode_init(payload));
  }
  SECTION("reclaim flag other than 0 or 1") {
    const std::size_t flag_at = 2 + 1 + 1 + m.token.size() + 1 + m.subdomain.size();
    payload[flag_at] = 2;
    CHECK_FALSE(proto::decode_init(payload));
  }
  SECTION("subdomain longer than a DNS label") {
    std::vector<std::uint8_t> p = {0, std::uint8_t(proto::protocol_version), 1, 0, 64};
    p.insert(p.end(), 64, 'a');
    p.push_back(0);
    CHECK_FALSE(proto::decode_init(p));
  }
  SECTION("another protocol version is reported, not parsed") {
    std::vector<std::uint8_t> p = {0, 9, 0xFF, 0xFF};
    auto d = proto::decode_init(p);
    REQUIRE(d);
    CHECK(d->version == 9);
  }
}

TEST_CASE("DOMAIN round-trips and rejects malformed payloads", "[messages]") {
  proto::domain_message m;
  m.tunnel_id = 42;
  m.secret = sample_secret();
  m.public_port = 20001;
  m.heartbeat_interval_s = 5;
  m.data_connections = 2;
  m.domain = "swift-lynx-63.localhost";
  m.public_url = "http://swift-lynx-63.localhost:20001";
  auto payload = payload_of(proto::encode(m), proto::frame_type::domain);
  auto back = proto::decode_domain(payload);
  REQUIRE(back);
  CHECK(back->tunnel_id == 42);
  CHECK(back->secret == sample_secret());
  CHECK(back->public_port == 20001);
  CHECK(back->heartbeat_interval_s == 5);
  CHECK(back->data_connections == 2);
  CHECK(back->domain == m.domain);
  CHECK(back->public_url == m.public_url);
  check_truncations_rejected(payload, proto::decode_domain);

  SECTION("zero data connections or heartbeat interval") {
    m.data_connections = 0;
    CHECK_FALSE(proto::decode_domain(payload_of(proto::encode(m), proto::frame_type::domain)));
    m.data_connections = 1;
    m.heartbeat_interval_s = 0;
    CHECK_FALSE(proto::decode_domain(payload_of(proto::encode(m), proto::frame_type::domain)));
  }
}

TEST_CASE("ERROR round-trips, caps its text, keeps unknown codes", "[messages]") {
  proto::error_message m{proto::error_code::no_capacity, "this server is at its limit"};
  auto payload = payload_of(proto::encode(m), proto::frame_type::error);
  auto back = proto::decode_error_message(payload);
  REQUIRE(back);
  CHECK(back->code == proto::error_code::no_capacity);
  CHECK(back->message == m.message);
  check_truncations_rejected(payload, proto::decode_error_message);

  proto::error_message longer{proto::error_code::internal, std::string(5000, 'x')};
  auto capped =
      proto::decode_error_message(payload_of(proto::encode(longer), proto::frame_type::error));
  REQUIRE(capped);
  CHECK(capped->message.size() == 512);

  std::vector<std::uint8_t> unknown = {0x7F, 0x00, 0, 2, 'h', 'i'};
  auto kept = proto::decode_error_message(unknown);
  REQUIRE(kept);
  CHECK(static_cast<std::uint16_t>(kept->code) == 0x7F00);

  std::vector<std::uint8_t> overlong = {0, 1, 0x02, 0x01};  // claims 513 bytes of text
  overlong.insert(overlong.end(), 513, 'y');
  CHECK_FALSE(proto::decode_error_message(overlong));
}

TEST_CASE("DATA_INIT round-trips and rejects malformed payloads", "[messages]") {
  proto::data_init_message m;
  m.tunnel_id = 0xDEADBEEFCAFEF00DULL;
  m.secret = sample_secret();
  auto frame = proto::encode(m);
  CHECK(frame.size() == proto::header_size + 42);  // the fixed size the header rules demand
  auto payload = payload_of(frame, proto::frame_type::data_init);
  auto back = proto::decode_data_init(payload);
  REQUIRE(back);
  CHECK(back->version == proto::protocol_version);
  CHECK(back->tunnel_id == m.tunnel_id);
  CHECK(back->secret == m.secret);
  check_truncations_rejected(payload, proto::decode_data_init);
}

TEST_CASE("empty frames carry only a header", "[messages]") {
  for (auto type :
       {proto::frame_type::ack, proto::frame_type::data_ready, proto::frame_type::reopen}) {
    auto frame = proto::encode_empty(type);
    CHECK(payload_of(frame, type).empty());
  }
}

TEST_CASE("DATA_ROUTE round-trips and rejects malformed payloads", "[messages]") {
  proto::data_route_message m;
  for (std::size_t i = 0; i < m.route_tag.size(); ++i) m.route_tag[i] = std::uint8_t(0xA0 + i);
  auto frame = proto::encode(m);
  CHECK(frame.size() == proto::header_size + 2 + proto::route_tag_size);
  auto payload = payload_of(frame, proto::frame_type::data_route);
  auto back = proto::decode_data_route(payload);
  REQUIRE(back);
  CHECK(back->version == proto::protocol_version);
  CHECK(back->route_tag == m.route_tag);
  check_truncations_rejected(payload, proto::decode_data_route);
}
