// Port range scan with a rotating cursor, so a released port is not handed out again at once.
#include "supervisor/public_ports.hpp"

#include <spdlog/spdlog.h>

#include "shared/net/cloexec_socket.hpp"

namespace culvert::supervisor {

using boost::asio::ip::tcp;

public_ports::public_ports(boost::asio::io_context& io, std::string bind_address, std::uint16_t min,
                           std::uint16_t max)
    : io_(io), address_(boost::asio::ip::make_address(bind_address)), min_(min), max_(max) {}

std::optional<tcp::acceptor> public_ports::bind(std::uint16_t port) {
  if (taken_.count(port)) return std::nullopt;
  boost::system::error_code ec;
  tcp::acceptor acceptor = shared::net::open_listener(io_, tcp::endpoint(address_, port), 4096, ec);
  if (ec) {
    spdlog::debug("public port {} not usable: {}", port, ec.message());
    return std::nullopt;
  }
  taken_.insert(port);
  return acceptor;
}

std::optional<tcp::acceptor> public_ports::bind_any() {
  const std::uint32_t span = std::uint32_t(max_) - min_ + 1;
  for (std::uint32_t tried = 0; tried < span; ++tried) {
    const auto port = std::uint16_t(min_ + (cursor_++ % span));
    if (auto acceptor = bind(port)) return acceptor;
  }
  return std::nullopt;
}

}  // namespace culvert::supervisor
