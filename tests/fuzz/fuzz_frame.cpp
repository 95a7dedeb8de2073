// Fuzz target: the wire frame header decoder and the handshake payload decoders (INIT, DOMAIN,
// ERROR, DATA_INIT, DATA_ROUTE). Input: a 10-byte header followed by a payload; every payload
// decoder sees the bytes after the header whatever the header says. Checks that accepted headers
// respect the documented limits and that every accepted message re-encodes to exactly the bytes it
// came from.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <variant>

#include "shared/protocol/frame.hpp"
#include "shared/protocol/messages.hpp"

namespace proto = culvert::shared::protocol;

namespace {

[[noreturn]] void fail(const char* what) {
  __builtin_printf("fuzz_frame: invariant broken: %s\n", what);
  std::abort();
}

// encode() returns header + payload; the payload part must equal what was decoded.
void expect_same_payload(const proto::encoded_frame& encoded, std::span<const std::uint8_t> payload,
                         proto::frame_type type, const char* what) {
  if (encoded.size() != proto::header_size + payload.size() ||
      std::memcmp(encoded.data() + proto::header_size, payload.data(), payload.size()) != 0)
    fail(what);
  // The encoder's own header must pass the decoder.
  auto head = proto::decode_header(
      std::span<const std::uint8_t, proto::header_size>(encoded.data(), proto::header_size));
  auto* h = std::get_if<proto::frame_header>(&head);
  if (!h || h->type != type || h->length != payload.size()) fail("encoded header rejected");
}

void check_header(std::span<const std::uint8_t, proto::header_size> bytes) {
  auto decoded = proto::decode_header(bytes);
  if (auto* e = std::get_if<proto::decode_error>(&decoded)) {
    if (proto::to_string(*e).empty()) fail("empty decode_error text");
    return;
  }
  const auto& h = std::get<proto::frame_header>(decoded);
  const bool is_data = h.type == proto::frame_type::data;
  if (h.length > (is_data ? proto::max_data_payload : proto::max_control_payload))
    fail("accepted a length above the documented maximum");
  const bool stream_frame = static_cast<std::uint8_t>(h.type) >= 0x10;
  if (stream_frame != (h.stream_id != 0)) fail("stream id rule not enforced");
  if (proto::to_string(h.type) == "?") fail("accepted a type without a name");
  auto again = proto::encode_header(h);
  if (std::memcmp(again.data(), bytes.data(), proto::header_size) != 0)
    fail("header does not re-encode to its bytes");
}

void check_payload(std::span<const std::uint8_t> payload) {
  if (auto m = proto::decode_init(payload)) {
    if (m->version == proto::protocol_version)
      expect_same_payload(proto::encode(*m), payload, proto::frame_type::init, "INIT round trip");
  }
  if (auto m = proto::decode_domain(payload))
    expect_same_payload(proto::encode(*m), payload, proto::frame_type::domain, "DOMAIN round trip");
  if (auto m = proto::decode_error_message(payload)) {
    expect_same_payload(proto::encode(*m), payload, proto::frame_type::error, "ERROR round trip");
    (void)proto::to_string(m->code);
  }
  if (auto m = proto::decode_data_init(payload))
    expect_same_payload(proto::encode(*m), payload, proto::frame_type::data_init,
                        "DATA_INIT round trip");
  if (auto m = proto::decode_data_route(payload))
    expect_same_payload(proto::encode(*m), payload, proto::frame_type::data_route,
                        "DATA_ROUTE round trip");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < proto::header_size) {
    check_payload(std::span(data, size));
    return 0;
  }
  check_header(std::span<const std::uint8_t, proto::header_size>(data, proto::header_size));
  check_payload(std::span(data + proto::header_size, size - proto::header_size));
  return 0;
}
