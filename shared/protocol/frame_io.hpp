// Reading and writing whole frames on a stream socket, for the handshake and control connections
// (the data connection's multiplexer parses frames itself). Used by supervisor, worker, client.
// Invariant: read_frame consumes exactly one frame's bytes and nothing after it, so the socket can
// be handed to another process right after a DATA_INIT; it allocates a payload only after the
// header has passed the caller's limits (type and length).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "shared/net/transport.hpp"
#include "shared/protocol/frame.hpp"
#include "shared/protocol/messages.hpp"

namespace culvert::shared::protocol {

namespace net = shared::net;

struct frame {
  frame_header header;
  std::vector<std::uint8_t> payload;
};

struct read_failure {
  enum class kind { closed, io_error, malformed, timed_out } why;
  std::string what;
};

using read_result = std::variant<frame, read_failure>;

// What the caller can use at this point of the exchange, checked at the header: a peer that
// announces anything else (a 1 MiB DATA frame before authentication) is refused as malformed
// before a byte of its payload is allocated or read.
struct frame_limits {
  std::size_t max_payload = max_data_payload;
  std::span<const frame_type> accepted{};  // empty: every type decode_header accepts
};

boost::asio::awaitable<read_result> read_frame(net::transport&, frame_limits = {});
// As read_frame, but gives up (and cancels the read) after `limit`.
boost::asio::awaitable<read_result> read_frame(net::transport&,
                                               std::chrono::steady_clock::duration limit,
                                               frame_limits = {});
boost::asio::awaitable<boost::system::error_code> write_frame(net::transport&,
                                                              const encoded_frame&);
// Sends an ERROR frame (best effort, bounded in time) and closes the socket.
boost::asio::awaitable<void> refuse(net::transport&, error_code, std::string message);

}  // namespace culvert::shared::protocol
