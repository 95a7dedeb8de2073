// The window tuner's judgement of one delivery-rate sample (see window_tuner.hpp). Runs once a
// quarter window has been delivered, not per write: out of line.
#include "shared/net/window_tuner.hpp"

#include <algorithm>

namespace culvert::shared::net {

window_tuner::outcome window_tuner::end_sample(stream_window& w, std::chrono::microseconds min_rtt,
                                               bool backlog_remains, clock::time_point now) {
  if (min_rtt.count() == 0) return {};  // nothing to multiply by yet
  const auto elapsed = now - w.sample_start;
  if (elapsed < std::max<clock::duration>(min_rtt, min_sample)) return {};
  const double estimate =
      double(w.sample_bytes) * double(min_rtt.count()) /
      double(std::chrono::duration_cast<std::chrono::microseconds>(elapsed).count());
  const bool limits = !w.backlogged && 2 * estimate >= double(w.size);
  w.sample_start = now;
  w.sample_bytes = 0;
  w.backlogged = backlog_remains;
  outcome result{.sampled = true};
  if (limits && w.size < max_ && budget_.take(w.size)) {
    result.growth = w.size;
    w.size *= 2;
  }
  return result;
}

}  // namespace culvert::shared::net
