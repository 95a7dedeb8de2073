// Receive-window auto-tuning, after BBR's delivery-rate estimate, and the process-wide budget
// that window growth draws on. No sockets and no clock of its own: each mux_session (worker and
// client, on their one io_context thread) reports the bytes a stream delivered and the time.
// Invariant: a window only doubles, only while under max_window and with room in the budget,
// and release() gives all of its growth back when the stream ends.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace culvert::shared::net {

// Window growth beyond the initial windows, summed over every stream of one process: auto-tuning
// stops at the limit, so memory stays bounded however many streams are busy. One per process,
// held beside its buffer_pool and given to each mux_session; single-threaded like the pool.
class window_budget {
 public:
  static constexpr std::size_t default_limit = 256 * 1024 * 1024;

  explicit window_budget(std::size_t limit = default_limit) : limit_(limit) {}
  window_budget(const window_budget&) = delete;
  window_budget& operator=(const window_budget&) = delete;

  // Takes `bytes` of growth if all of it fits under the limit.
  bool take(std::size_t bytes) {
    if (used_ + bytes > limit_) return false;
    used_ += bytes;
    return true;
  }
  void give(std::size_t bytes) { used_ -= bytes; }
  std::size_t used() const { return used_; }
  std::size_t limit() const { return limit_; }

 private:
  std::size_t limit_;
  std::size_t used_ = 0;
};

// One stream's receive window and the delivery-rate sample running on it. Plain state, updated
// on every write to the stream's socket: kept small (it lives in every stream) and inline.
struct stream_window {
  using clock = std::chrono::steady_clock;

  stream_window(std::uint32_t initial_window, clock::time_point now)
      : size(initial_window), sample_start(now) {}

  // Bytes written to the stream's local socket.
  void delivered(std::size_t bytes) { sample_bytes += bytes; }
  // Bytes had to wait for the local socket: in this sample the local reader, not the window,
  // limits the stream, and a larger window would only queue more bytes in this process.
  void backlog() { backlogged = true; }

  std::uint32_t size;
  bool backlogged = false;  // since sample_start, bytes had to wait for the socket
  clock::time_point sample_start;
  std::uint64_t sample_bytes = 0;  // delivered since sample_start
};

// The rules, one per session: every stream's window starts at initial_window and may grow to
// max_window, drawing on the process's budget.
class window_tuner {
 public:
  using clock = stream_window::clock;
  // A delivery-rate sample lasts at least this long (and at least one minimum round trip):
  // longer than the bursts a busy scheduler makes, which over a shorter span look like a fast
  // link (bytes the kernel queued while this process waited for a core pour in at once), and a
  // window grown on that overflows the splice pipe into copies.
  static constexpr std::chrono::milliseconds min_sample{2};

  window_tuner(std::uint32_t initial_window, std::uint32_t max_window, window_budget& budget)
      : budget_(budget), initial_(initial_window), max_(max_window) {}

  stream_window open(clock::time_point now) const { return stream_window(initial_, now); }

  struct outcome {
    bool sampled = false;      // the sample was long enough and was judged (then a new one began)
    std::uint32_t growth = 0;  // bytes added to the window: extra credit for the peer
  };
  // At a WINDOW update: once the sample has lasted max(min_rtt, min_sample), the bytes delivered
  // over it times min_rtt estimate the bandwidth-delay product. A window under twice the
  // estimate limits the stream and doubles, within max_window and the budget; not after a
  // backlogged sample. `backlog_remains`: bytes still wait for the socket, so the next sample
  // starts backlogged. With no round trip measured yet (min_rtt 0) nothing is judged.
  outcome end_sample(stream_window&, std::chrono::microseconds min_rtt, bool backlog_remains,
                     clock::time_point now);
  // The stream ended: its window's growth goes back to the budget and the window is initial.
  void release(stream_window& w) {
    budget_.give(w.size - initial_);
    w.size = initial_;
  }

 private:
  window_budget& budget_;
  std::uint32_t initial_, max_;
};

}  // namespace culvert::shared::net
