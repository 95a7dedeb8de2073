// Per-key usage counts with leases (see usage_counter.hpp). Runs in the supervisor.
// Invariant: every key in the map has a count of at least 1, equal to its live leases.
#include "supervisor/usage_counter.hpp"

#include <cstdio>
#include <cstdlib>

namespace culvert::supervisor {

usage_counter::lease& usage_counter::lease::operator=(lease&& other) noexcept {
  if (this != &other) {
    release();
    counts_ = std::move(other.counts_);
    key_ = std::move(other.key_);
  }
  return *this;
}

void usage_counter::lease::release() noexcept {
  if (!counts_) return;
  const auto it = counts_->find(key_);
  if (it == counts_->end() || it->second == 0) {
    // Only a lease decrements, once: a missing key means the map was corrupted.
    std::fprintf(stderr, "culvert: usage_counter: releasing '%s' which holds nothing\n",
                 key_.c_str());
    std::abort();
  }
  if (--it->second == 0) counts_->erase(it);
  counts_.reset();
}

std::optional<usage_counter::lease> usage_counter::try_acquire(std::string key,
                                                               std::uint32_t limit) {
  const auto it = counts_->find(key);
  const std::uint32_t held = it == counts_->end() ? 0 : it->second;
  if (held >= limit) return std::nullopt;
  if (it == counts_->end())
    counts_->emplace(key, 1);
  else
    ++it->second;
  return lease(counts_, std::move(key));
}

std::uint32_t usage_counter::count(std::string_view key) const {
  const auto it = counts_->find(key);
  return it == counts_->end() ? 0 : it->second;
}

}  // namespace culvert::supervisor
