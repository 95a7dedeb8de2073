// "host:port" parsing and printing for flags, configuration and logs ([v6]:port included).
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace culvert::shared::net {

struct host_port {
  std::string host;
  std::uint16_t port = 0;
};

// Accepts "host:port", "[v6]:port"; with default_host, also a bare "port".
std::optional<host_port> parse_host_port(std::string_view text,
                                         std::optional<std::string_view> default_host = {});
std::string to_string(const boost::asio::ip::tcp::endpoint&);
// "localhost", "*.localhost", 127.0.0.0/8 and ::1: traffic that never leaves this machine.
bool is_loopback_host(std::string_view host);

}  // namespace culvert::shared::net
