// The supervisor <-> worker channel: a SOCK_SEQPACKET Unix socket pair carrying small messages,
// each optionally with one file descriptor (SCM_RIGHTS). The supervisor hands accepted data
// connections to a worker this way, so their bytes never pass through the supervisor.
// Invariant: a received message is checked field by field (size, truncation, cmsg level, type and
// length); anything unexpected is an error and every descriptor that arrived is closed.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/generic/seq_packet_protocol.hpp>
#include <boost/system/error_code.hpp>
#include <cstdint>
#include <span>
#include <string>
#include <variant>

namespace culvert::shared::ipc {

// Boost 1.81 has no local::seq_packet_protocol; the generic one with AF_UNIX is the same socket.
using channel_protocol = boost::asio::generic::seq_packet_protocol;
using channel_socket = channel_protocol::socket;
channel_protocol unix_seqpacket();

// socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC): the supervisor keeps one end, a worker
// inherits the other. Throws boost::system::system_error on failure.
void make_channel_pair(channel_socket& a, channel_socket& b);

inline constexpr std::size_t max_channel_message = 256;

// One message as received: fd is -1 when none came with it; the receiver owns fd.
struct channel_message {
  std::string payload;
  int fd = -1;
};

// Sends payload (<= max_channel_message) and, if fd >= 0, a duplicate of fd (the caller keeps fd).
boost::asio::awaitable<boost::system::error_code> send_message(channel_socket&,
                                                               std::string_view payload,
                                                               int fd = -1);

// Returns the message, or an error: invalid_argument for a malformed message, consumed whole
// with its descriptors closed (MSG_CTRUNC, when this process has no descriptor free for the one
// sent, is one), after which the next message can be read; eof when the peer closed; anything
// else is the channel's end.
boost::asio::awaitable<std::variant<channel_message, boost::system::error_code>> receive_message(
    channel_socket&);

}  // namespace culvert::shared::ipc
