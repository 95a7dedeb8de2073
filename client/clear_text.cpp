// See clear_text.hpp. Every address counts: a name with one loopback and one remote address
// could be connected through either, so it gets TLS.
#include "client/clear_text.hpp"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <boost/asio/ip/tcp.hpp>
#include <cstring>
#include <memory>

namespace culvert::client {

std::optional<std::vector<boost::asio::ip::address>> resolve_addresses(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0 || !found) return std::nullopt;
  const std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> owner(found, ::freeaddrinfo);
  std::vector<boost::asio::ip::address> out;
  for (const addrinfo* a = found; a; a = a->ai_next) {
    boost::asio::ip::tcp::endpoint endpoint;
    if (a->ai_addrlen > endpoint.capacity()) continue;
    std::memcpy(endpoint.data(), a->ai_addr, a->ai_addrlen);
    endpoint.resize(a->ai_addrlen);
    out.push_back(endpoint.address());
  }
  return out;
}

bool stays_on_this_machine(const std::string& host, const resolve_function& resolve) {
  boost::system::error_code ec;
  const auto literal = boost::asio::ip::make_address(host, ec);
  if (!ec) return literal.is_loopback();
  const auto addresses = resolve(host);
  return addresses && !addresses->empty() &&
         std::all_of(addresses->begin(), addresses->end(),
                     [](const boost::asio::ip::address& a) { return a.is_loopback(); });
}

}  // namespace culvert::client
