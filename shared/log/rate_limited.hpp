// A gate for warnings a hostile peer can trigger at will (refused visitors, refused streams):
// at most one line per interval, and the next line says how many were left out meanwhile.
// Any process, single-threaded; the caller formats the line only when allow() says so.
#pragma once

#include <chrono>
#include <cstdint>

namespace culvert::shared::log {

class rate_limited {
 public:
  explicit rate_limited(std::chrono::steady_clock::duration interval = std::chrono::seconds(10))
      : interval_(interval) {}

  // True when a line may be written now; then suppressed() says how many were left out before.
  bool allow() {
    const auto now = std::chrono::steady_clock::now();
    if (written_ && now - last_ < interval_) {
      ++skipped_;
      return false;
    }
    written_ = true;
    last_ = now;
    reported_ = skipped_;
    skipped_ = 0;
    return true;
  }
  std::uint64_t suppressed() const { return reported_; }

 private:
  std::chrono::steady_clock::duration interval_;
  std::chrono::steady_clock::time_point last_{};
  bool written_ = false;
  std::uint64_t skipped_ = 0, reported_ = 0;
};

}  // namespace culvert::shared::log
