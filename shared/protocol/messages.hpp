// Payload codecs of the handshake frames (INIT, DOMAIN, ERROR, DATA_INIT) and the mux's small
// fixed frames. Used by supervisor, worker and client.
// Invariant: decoders read only inside the given span and reject trailing or missing bytes.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shared/protocol/frame.hpp"

namespace culvert::shared::protocol {

inline constexpr std::size_t secret_size = 32;
using secret_bytes = std::array<std::uint8_t, secret_size>;
// HMAC-SHA256(secret, "culvert data route tag v1") (shared/tls): names a tunnel on a TLS server's
// data connection without revealing its id, its secret or its data key.
inline constexpr std::size_t route_tag_size = 32;
using route_tag_bytes = std::array<std::uint8_t, route_tag_size>;

enum class tunnel_kind : std::uint8_t { http = 1, tcp = 2 };

// Error codes carried in ERROR frames (docs/protocol.md lists them).
enum class error_code : std::uint16_t {
  protocol_error = 1,
  bad_token = 2,
  name_taken = 3,
  name_invalid = 4,
  no_capacity = 5,
  version_mismatch = 6,
  handshake_timeout = 7,
  bad_secret = 8,
  internal = 9,
  shutting_down = 10,
  unknown_tunnel = 11,
  overloaded = 12,
};
std::string_view to_string(error_code);

struct reclaim_request {
  std::uint64_t tunnel_id = 0;
  secret_bytes secret{};
};

struct init_message {
  std::uint16_t version = protocol_version;
  tunnel_kind kind = tunnel_kind::http;
  std::string token;                       // <= 255 bytes
  std::string subdomain;                   // <= 63 bytes, empty = let the server choose
  std::optional<reclaim_request> reclaim;  // ask for a held tunnel back
};

struct domain_message {
  std::uint64_t tunnel_id = 0;
  secret_bytes secret{};
  std::uint16_t public_port = 0;
  std::uint16_t heartbeat_interval_s = 5;
  std::uint8_t data_connections = 1;
  std::string domain;      // <= 255 bytes
  std::string public_url;  // <= 255 bytes, what the client prints
};

struct error_message {
  error_code code = error_code::internal;
  std::string message;  // <= 512 bytes, human readable
};

struct data_init_message {
  std::uint16_t version = protocol_version;
  std::uint64_t tunnel_id = 0;
  secret_bytes secret{};
};

// First frame of a data connection to a TLS server, sent in clear: its route tag lets the
// supervisor hand the connection to that tunnel's worker, which then runs the TLS handshake
// keyed by the tunnel's secret (the secret itself never crosses the wire). Only who holds the
// secret can compute the tag, so a tunnel id alone routes nothing.
struct data_route_message {
  std::uint16_t version = protocol_version;
  route_tag_bytes route_tag{};
};

// A frame ready to write: header and payload in one buffer.
using encoded_frame = std::vector<std::uint8_t>;

encoded_frame encode(const init_message&);
encoded_frame encode(const domain_message&);
encoded_frame encode(const error_message&);
encoded_frame encode(const data_init_message&);
encoded_frame encode(const data_route_message&);
encoded_frame encode_empty(frame_type);  // ACK, DATA_READY, REOPEN

std::optional<init_message> decode_init(std::span<const std::uint8_t>);
std::optional<domain_message> decode_domain(std::span<const std::uint8_t>);
std::optional<error_message> decode_error_message(std::span<const std::uint8_t>);
std::optional<data_init_message> decode_data_init(std::span<const std::uint8_t>);
std::optional<data_route_message> decode_data_route(std::span<const std::uint8_t>);

}  // namespace culvert::shared::protocol
