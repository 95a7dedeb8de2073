// Socket settings every culvert process applies to relayed TCP sockets, and the abortive close
// that makes a cut-off stream look cut off (RST) rather than complete (FIN).
#pragma once

#include <boost/asio/ip/tcp.hpp>

namespace culvert::shared::net {

// TCP_NODELAY: a tunnel adds no Nagle delay of its own to small writes.
void set_nodelay(boost::asio::ip::tcp::socket&);

// SO_LINGER {on, 0}: from now on, close() sends RST. Armed on every visitor socket at accept, so
// even a worker killed by SIGKILL resets its visitors instead of ending them with a clean FIN.
void arm_reset_on_close(boost::asio::ip::tcp::socket&);
void disarm_reset_on_close(boost::asio::ip::tcp::socket&);

// Abortive close: the peer sees "connection reset", never a normal end of stream.
void reset_and_close(boost::asio::ip::tcp::socket&);

// Orderly close: any armed reset is disarmed first so the peer gets the FIN it is owed.
void graceful_close(boost::asio::ip::tcp::socket&);

}  // namespace culvert::shared::net
