// Visitors open per source, in the worker: an IPv4 address, or an IPv6 /64 (one host's usual
// share), so one source cannot take every visitor slot and buffer of the tunnel.
// Invariant: each visitor counted by try_add() is removed exactly once; a count of zero is erased,
// so the table holds only sources with a visitor open.
#pragma once

#include <array>
#include <boost/asio/ip/address.hpp>
#include <cstdint>
#include <map>

namespace culvert::worker {

class source_limit {
 public:
  explicit source_limit(std::uint32_t per_source) : per_source_(per_source) {}

  // Counts a visitor from `source`; false (nothing counted) if it already has per_source open.
  bool try_add(const boost::asio::ip::address& source);
  void remove(const boost::asio::ip::address& source);
  std::uint32_t open_from(const boost::asio::ip::address& source) const;
  std::size_t sources() const { return open_.size(); }

 private:
  using key = std::array<unsigned char, 16>;
  static key key_of(const boost::asio::ip::address&);

  std::uint32_t per_source_;
  std::map<key, std::uint32_t> open_;
};

}  // namespace culvert::worker
