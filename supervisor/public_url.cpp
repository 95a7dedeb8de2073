// Formats a tunnel's public address (public_url.hpp).
#include "supervisor/public_url.hpp"

#include <boost/asio/ip/address.hpp>

namespace culvert::supervisor {

std::string public_url(const tunnel& t, const config& cfg) {
  const auto port = std::to_string(t.port);
  if (t.kind == shared::protocol::tunnel_kind::http) return "http://" + t.domain + ":" + port;
  std::string host = cfg.public_host;
  if (host.empty()) {
    const auto address = boost::asio::ip::make_address(cfg.public_bind);
    host = address.is_unspecified() ? cfg.base_domain : cfg.public_bind;
  }
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return "tcp://" + host + ":" + port;
}

}  // namespace culvert::supervisor
