// host:port parsing.
#include "shared/net/address.hpp"

#include <charconv>

namespace culvert::shared::net {

namespace {
std::optional<std::uint16_t> parse_port(std::string_view s) {
  unsigned value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc{} || end != s.data() + s.size() || value > 65535 || s.empty())
    return std::nullopt;
  return std::uint16_t(value);
}
}  // namespace

std::optional<host_port> parse_host_port(std::string_view text,
                                         std::optional<std::string_view> default_host) {
  if (text.empty()) return std::nullopt;
  if (text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return std::nullopt;
    auto port = parse_port(text.substr(close + 2));
    if (!port || close == 1) return std::nullopt;
    return host_port{std::string(text.substr(1, close - 1)), *port};
  }
  auto colon = text.rfind(':');
  if (colon == std::string_view::npos) {
    auto port = parse_port(text);
    if (!port || !default_host) return std::nullopt;
    return host_port{std::string(*default_host), *port};
  }
  if (text.find(':') != colon || colon == 0) return std::nullopt;  // bare v6 needs brackets
  auto port = parse_port(text.substr(colon + 1));
  if (!port) return std::nullopt;
  return host_port{std::string(text.substr(0, colon)), *port};
}

std::string to_string(const boost::asio::ip::tcp::endpoint& e) {
  if (e.address().is_v6()) return "[" + e.address().to_string() + "]:" + std::to_string(e.port());
  return e.address().to_string() + ":" + std::to_string(e.port());
}

bool is_loopback_host(std::string_view host) {
  if (host == "localhost" || host.ends_with(".localhost")) return true;
  boost::system::error_code ec;
  auto address = boost::asio::ip::make_address(std::string(host), ec);
  return !ec && address.is_loopback();
}

}  // namespace culvert::shared::net
