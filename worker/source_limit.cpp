// Per-source visitor counts (see source_limit.hpp).
#include "worker/source_limit.hpp"

namespace culvert::worker {

source_limit::key source_limit::key_of(const boost::asio::ip::address& a) {
  key k{};
  if (a.is_v4() || (a.is_v6() && a.to_v6().is_v4_mapped())) {
    const auto v4 = a.is_v4()
                        ? a.to_v4()
                        : boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, a.to_v6());
    const auto bytes = v4.to_bytes();
    std::copy(bytes.begin(), bytes.end(), k.begin());
    return k;
  }
  const auto bytes = a.to_v6().to_bytes();
  std::copy(bytes.begin(), bytes.begin() + 8, k.begin());  // the /64 prefix
  k[15] = 6;  // keeps an IPv6 prefix apart from an IPv4 address with the same first bytes
  return k;
}

bool source_limit::try_add(const boost::asio::ip::address& source) {
  auto& n = open_[key_of(source)];
  if (n >= per_source_) return false;
  ++n;
  return true;
}

void source_limit::remove(const boost::asio::ip::address& source) {
  auto it = open_.find(key_of(source));
  if (it == open_.end()) return;
  if (--it->second == 0) open_.erase(it);
}

std::uint32_t source_limit::open_from(const boost::asio::ip::address& source) const {
  auto it = open_.find(key_of(source));
  return it == open_.end() ? 0 : it->second;
}

}  // namespace culvert::worker
