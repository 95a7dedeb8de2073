// Two connected TCP sockets on 127.0.0.1, for unit tests and fuzz targets that drive the
// multiplexer or the frame reader over a real kernel socket. Test code only.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <utility>

namespace culvert::tests {

inline std::pair<boost::asio::ip::tcp::socket, boost::asio::ip::tcp::socket> loopback_pair(
    boost::asio::io_context& io) {
  using boost::asio::ip::tcp;
  tcp::acceptor acceptor(io, tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0));
  tcp::socket a(io), b(io);
  a.connect(acceptor.local_endpoint());
  acceptor.accept(b);
  return {std::move(a), std::move(b)};
}

}  // namespace culvert::tests
