// See line_budget.hpp. Fixed windows: simple, and a burst is bounded by 2 x lines at a boundary.
#include "shared/log/line_budget.hpp"

namespace culvert::shared::log {

bool line_budget::allow(clock::time_point now, std::uint64_t& suppressed) {
  if (now - window_start_ >= window_) {
    window_start_ = now;
    used_ = 0;
  }
  if (used_ >= lines_) {
    ++refused_;
    return false;
  }
  ++used_;
  suppressed = refused_;
  refused_ = 0;
  return true;
}

}  // namespace culvert::shared::log
