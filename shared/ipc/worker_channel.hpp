// The vocabulary of the supervisor <-> worker channel (carried by fd_channel): what each message
// kind means, its encoding and decoding, and the worker's exit codes. Used by both sides.
// Invariant: a decoder accepts a message only if its kind, length, digits and descriptor (one
// must come with a data connection, none with anything else) are exactly as encoded here.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace culvert::shared::ipc::worker_channel {

// The first byte of every message.
enum class kind : char {
  data_key = 'K',             // supervisor -> worker: the tunnel's TLS data-connection key
  data_connection = 'D',      // supervisor -> worker (+ fd): authenticated, send DATA_READY
  tls_data_connection = 'T',  // supervisor -> worker (+ fd): run the TLS (PSK) handshake first
  ready = 'R',                // worker -> supervisor: serving; hand over waiting connections
  data_connections = 'C',     // worker -> supervisor: how many data connections it holds now
};

inline constexpr std::size_t data_key_size = 32;  // HMAC-SHA256 of the tunnel's secret

// To the worker.
struct data_key {
  std::uint64_t tunnel_id = 0;  // the PSK identity the client offers
  std::array<std::uint8_t, data_key_size> key{};
};
struct data_connection {
  bool tls = false;
  std::string peer;  // the client's address, for the worker's log
};
using to_worker = std::variant<data_key, data_connection>;

// To the supervisor.
struct ready {};
struct data_connection_count {
  std::uint16_t count = 0;
};
using to_supervisor = std::variant<ready, data_connection_count>;

// The caller should cleanse the returned string of a data_key once sent.
std::string encode(const data_key&);
std::string encode(const data_connection&);  // the socket travels beside it (SCM_RIGHTS)
std::string encode(const ready&);
std::string encode(const data_connection_count&);

// nullopt: not a message of that direction (the receiver logs it, closes any descriptor and
// reads on). `has_fd`: whether a descriptor arrived with the message.
std::optional<to_worker> decode_to_worker(std::string_view payload, bool has_fd);
std::optional<to_supervisor> decode_to_supervisor(std::string_view payload, bool has_fd);
// Whether `payload` starts with a worker -> supervisor kind (a malformed report, not an unknown
// one).
bool is_to_supervisor_kind(std::string_view payload);

// culvert-worker's exit codes, which the supervisor reads.
inline constexpr int exit_ok = 0;
inline constexpr int exit_fatal = 78;  // bad arguments or setup (EX_CONFIG): do not respawn

}  // namespace culvert::shared::ipc::worker_channel
