// The bad-token throttle (see auth_throttle.hpp). Runs in the supervisor, single-threaded.
// Invariant: records_ and by_source_ hold the same sources; records_ is ordered by last failure,
// so the front is both the first to expire and the one to evict.
#include "supervisor/auth_throttle.hpp"

#include <algorithm>

namespace culvert::supervisor {

std::string source_key(const boost::asio::ip::address& address) {
  if (address.is_v4()) return address.to_v4().to_string();
  const auto v6 = address.to_v6();
  if (v6.is_v4_mapped())
    return boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, v6).to_string();
  auto bytes = v6.to_bytes();
  // Providers hand a home or a server a /56 or a /48, not a /64: counting per /64 would give one
  // subscriber 256 or 65,536 separate budgets. A /56 keeps a shared /48 site usable.
  std::fill(bytes.begin() + 7, bytes.end(), 0);
  return boost::asio::ip::address_v6(bytes).to_string() + "/56";
}

auth_throttle::auth_throttle(auth_throttle_settings settings) : settings_(settings) {
  settings_.max_sources = std::max<std::size_t>(settings_.max_sources, 1);
}

std::uint32_t auth_throttle::live_failures(const record& r, clock::time_point now) const {
  return now - r.last_failure >= settings_.forget_after ? 0 : r.failures;
}

std::uint32_t auth_throttle::recent_failures(const std::string& source,
                                             clock::time_point now) const {
  const auto it = by_source_.find(source);
  return it == by_source_.end() ? 0 : live_failures(*it->second, now);
}

std::chrono::milliseconds auth_throttle::delay_before_refusal(const std::string& source,
                                                              clock::time_point now) const {
  const auto cap = std::max(settings_.base_delay, settings_.max_delay);
  auto delay = settings_.base_delay;
  // Doubling by steps saturates at the cap without overflowing, whatever the count.
  for (std::uint32_t n = recent_failures(source, now); n > 0 && delay < cap; --n) delay *= 2;
  return std::min(delay, cap);
}

void auth_throttle::record_failure(const std::string& source, clock::time_point now) {
  // Forget sources that have been quiet long enough; they sit at the front.
  while (!records_.empty() && now - records_.front().last_failure >= settings_.forget_after) {
    by_source_.erase(records_.front().source);
    records_.pop_front();
  }
  const auto it = by_source_.find(source);
  if (it != by_source_.end()) {
    record& r = *it->second;
    r.failures = live_failures(r, now) + (r.failures < UINT32_MAX ? 1 : 0);
    r.last_failure = now;
    records_.splice(records_.end(), records_, it->second);  // now the most recent
    return;
  }
  if (records_.size() >= settings_.max_sources) {
    by_source_.erase(records_.front().source);
    records_.pop_front();
  }
  records_.push_back({source, 1, now});
  by_source_.emplace(source, std::prev(records_.end()));
}

void auth_throttle::record_success(const std::string& source) {
  const auto it = by_source_.find(source);
  if (it == by_source_.end()) return;
  records_.erase(it->second);
  by_source_.erase(it);
}

}  // namespace culvert::supervisor
