// Slows down repeated bad tokens from one source: each refusal waits a fixed base delay, doubled
// for every recent failure from the same source, up to a cap. Runs in the supervisor's handshake.
// Invariant: the delay depends only on the source's recent failures, never on what was wrong with
// the token; memory stays bounded (at most max_sources entries, the oldest evicted first).
#pragma once

#include <boost/asio/ip/address.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <string>
#include <unordered_map>

namespace culvert::supervisor {

// Who a connection counts as, for per-source limits: an IPv4 address (also when IPv4-mapped), or
// an IPv6 /56, the smallest prefix providers usually delegate to one customer
// ("2001:db8:1:200::/56").
std::string source_key(const boost::asio::ip::address&);

struct auth_throttle_settings {
  std::chrono::milliseconds base_delay{1000};       // the first refusal's wait (0 = none)
  std::chrono::milliseconds max_delay{30000};       // the doubling stops here
  std::chrono::milliseconds forget_after{600'000};  // quiet this long and a source starts afresh
  std::size_t max_sources = 4096;
};

class auth_throttle {
 public:
  using clock = std::chrono::steady_clock;

  auth_throttle() : auth_throttle(auth_throttle_settings{}) {}
  explicit auth_throttle(auth_throttle_settings);
  // by_source_ points into records_: a copy would point into the original, a move carries both.
  auth_throttle(auth_throttle&&) = default;
  auth_throttle& operator=(auth_throttle&&) = default;
  auth_throttle(const auth_throttle&) = delete;
  auth_throttle& operator=(const auth_throttle&) = delete;

  // How long to wait before refusing a bad token from `source`: base_delay << recent failures,
  // at most max(base_delay, max_delay). Call before record_failure for the same attempt.
  std::chrono::milliseconds delay_before_refusal(const std::string& source,
                                                 clock::time_point now) const;
  void record_failure(const std::string& source, clock::time_point now);
  void record_success(const std::string& source);  // a good token clears the source's record
  std::uint32_t recent_failures(const std::string& source, clock::time_point now) const;
  std::size_t tracked() const { return by_source_.size(); }

 private:
  struct record {
    std::string source;
    std::uint32_t failures = 0;
    clock::time_point last_failure;
  };
  using order = std::list<record>;  // least recently failed first

  std::uint32_t live_failures(const record&, clock::time_point now) const;

  auth_throttle_settings settings_;
  order records_;
  std::unordered_map<std::string, order::iterator> by_source_;
};

}  // namespace culvert::supervisor
