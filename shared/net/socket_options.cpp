// Socket options and the two ways culvert closes a relayed socket.
#include "shared/net/socket_options.hpp"

namespace culvert::shared::net {

using boost::asio::ip::tcp;

void set_nodelay(tcp::socket& s) {
  boost::system::error_code ec;
  s.set_option(tcp::no_delay(true), ec);  // fails only on a dead socket, which the relay notices
}

void arm_reset_on_close(tcp::socket& s) {
  boost::system::error_code ec;
  s.set_option(boost::asio::socket_base::linger(true, 0), ec);
}

void disarm_reset_on_close(tcp::socket& s) {
  boost::system::error_code ec;
  s.set_option(boost::asio::socket_base::linger(false, 0), ec);
}

void reset_and_close(tcp::socket& s) {
  if (!s.is_open()) return;
  arm_reset_on_close(s);
  boost::system::error_code ec;
  s.close(ec);
}

void graceful_close(tcp::socket& s) {
  if (!s.is_open()) return;
  disarm_reset_on_close(s);
  boost::system::error_code ec;
  s.close(ec);
}

}  // namespace culvert::shared::net
