// Public ports: finds a free port in the configured range and binds the tunnel's listener on it.
// Runs in the supervisor, which binds (so a port is known to be free before it is promised to a
// client, and a restarted worker inherits the same socket with its backlog intact).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <cstdint>
#include <optional>
#include <set>
#include <string>

namespace culvert::supervisor {

class public_ports {
 public:
  public_ports(boost::asio::io_context&, std::string bind_address, std::uint16_t min,
               std::uint16_t max);
  // A listening acceptor on a free port of the range, or nullopt if none could be bound.
  std::optional<boost::asio::ip::tcp::acceptor> bind_any();
  // Binds one given port (used to get a reclaimed tunnel its old port back).
  std::optional<boost::asio::ip::tcp::acceptor> bind(std::uint16_t port);
  void give_back(std::uint16_t port) { taken_.erase(port); }

 private:
  boost::asio::io_context& io_;
  boost::asio::ip::address address_;
  std::uint16_t min_, max_;
  std::uint32_t cursor_ = 0;
  std::set<std::uint16_t> taken_;
};

}  // namespace culvert::supervisor
