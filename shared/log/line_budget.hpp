// A budget for log lines a peer can cause (its ERROR texts): at most `lines` per `window`, the
// rest counted and summed up in the next line allowed. Used by the supervisor; single-threaded.
// Invariant: however fast peers send, at most `lines` lines per window reach the log, and no
// refused line goes uncounted.
#pragma once

#include <chrono>
#include <cstdint>

namespace culvert::shared::log {

class line_budget {
 public:
  using clock = std::chrono::steady_clock;

  line_budget(std::uint32_t lines, clock::duration window) : lines_(lines), window_(window) {}

  // True if a line may be written now. When it is, `suppressed` is set to the number of lines
  // refused since the last allowed one (to be mentioned in that line), else it is left alone.
  bool allow(clock::time_point now, std::uint64_t& suppressed);

 private:
  std::uint32_t lines_;
  clock::duration window_;
  clock::time_point window_start_{};
  std::uint32_t used_ = 0;
  std::uint64_t refused_ = 0;
};

}  // namespace culvert::shared::log
