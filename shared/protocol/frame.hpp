// culvert's wire frame: a fixed 10-byte header (payload length, type, flags, stream id) followed by
// the payload. Used by every process on control and data connections (docs/protocol.md).
// Invariant: decode_header validates everything the header alone can tell (type, flags, stream id
// rules, length limits, fixed sizes) before any byte of payload is read or allocated.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>

namespace culvert::shared::protocol {

// 2: DATA frames up to 1 MiB (version 1 allowed 256 KiB). 3: DATA_ROUTE carries a route tag
// derived from the secret instead of the tunnel id. An older peer is refused by name.
inline constexpr std::uint16_t protocol_version = 3;
inline constexpr std::size_t header_size = 10;
inline constexpr std::size_t max_data_payload = 1024 * 1024;  // DATA frames
inline constexpr std::size_t max_control_payload = 2 * 1024;  // every other frame

enum class frame_type : std::uint8_t {
  // Control connection (stream id 0).
  init = 0x01,        // client -> server: opens a tunnel
  domain = 0x02,      // server -> client: the assigned domain, port, tunnel id and secret
  ack = 0x03,         // client -> server: domain accepted
  error = 0x04,       // either way: a refusal or fatal error, then the sender closes
  ping = 0x05,        // either way, control or data connection: keepalive / RTT probe
  data_init = 0x06,   // client -> server: first frame of a data connection
  data_ready = 0x07,  // worker -> client: the data connection is adopted by the tunnel's worker
  reopen = 0x08,      // server -> client: re-open your data connections (worker restarted)
  data_route = 0x09,  // client -> server, in clear: a TLS data connection for this tunnel follows
  // Data connection, multiplexed streams (stream id != 0).
  open = 0x10,    // worker -> client: a new visitor stream
  data = 0x11,    // either way: stream bytes; flag fin ends that direction
  window = 0x12,  // either way: credit for more stream bytes
  reset = 0x13,   // either way: the stream ended abnormally
};

namespace flags {
inline constexpr std::uint8_t none = 0;
inline constexpr std::uint8_t ack = 0x01;  // on ping: this is the echo
inline constexpr std::uint8_t fin = 0x01;  // on data: the sender's direction is finished
}  // namespace flags

struct frame_header {
  std::uint32_t length = 0;
  frame_type type = frame_type::ping;
  std::uint8_t flags = 0;
  std::uint32_t stream_id = 0;
};

enum class decode_error {
  unknown_type,
  bad_flags,
  too_long,
  bad_fixed_size,
  stream_id_required,
  stream_id_forbidden,
};
std::string_view to_string(decode_error);
std::string_view to_string(frame_type);

// Validates a header as far as the header alone allows.
std::variant<frame_header, decode_error> decode_header(std::span<const std::uint8_t, header_size>);
void encode_header(const frame_header&, std::span<std::uint8_t, header_size> out);
std::array<std::uint8_t, header_size> encode_header(const frame_header&);

// Big-endian helpers used by the payload codecs.
inline std::uint16_t load_u16(const std::uint8_t* p) {
  return std::uint16_t(p[0] << 8 | p[1]);
}
inline std::uint32_t load_u32(const std::uint8_t* p) {
  return std::uint32_t(p[0]) << 24 | std::uint32_t(p[1]) << 16 | std::uint32_t(p[2]) << 8 | p[3];
}
inline std::uint64_t load_u64(const std::uint8_t* p) {
  return std::uint64_t(load_u32(p)) << 32 | load_u32(p + 4);
}
inline void store_u16(std::uint8_t* p, std::uint16_t v) {
  p[0] = std::uint8_t(v >> 8);
  p[1] = std::uint8_t(v);
}
inline void store_u32(std::uint8_t* p, std::uint32_t v) {
  for (int i = 3; i >= 0; --i, v >>= 8) p[i] = std::uint8_t(v);
}
inline void store_u64(std::uint8_t* p, std::uint64_t v) {
  store_u32(p, std::uint32_t(v >> 32));
  store_u32(p + 4, std::uint32_t(v));
}

}  // namespace culvert::shared::protocol
