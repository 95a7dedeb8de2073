// The multiplexer's keepalive: a PING every keepalive_interval (and one at start for a first
// RTT sample), echoes with a flood limit, RTT and minimum RTT from the echoes, the idle timeout,
// and the trimming of idle memory on a tick with no traffic. Worker and client alike.
// Invariant: any received frame is proof of life; a session silent past idle_timeout is closed.
#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include "shared/net/mux_session.hpp"
#include "shared/net/mux_stream.hpp"

namespace culvert::shared::net {

namespace {

constexpr std::uint32_t max_pings_per_second = 50;
// The minimum round trip (what window auto-tuning multiplies by) is kept this long (six
// keepalives), so that a lengthened path is seen.
constexpr std::chrono::seconds min_rtt_lifetime{30};
// A PING echo older than this (or from a clock that went back) is no round-trip sample.
constexpr std::uint64_t max_echo_age_ns = 60'000'000'000ULL;

std::uint64_t now_ns() {
  return std::uint64_t(
      std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch())
          .count());
}

}  // namespace

asio::awaitable<void> mux_session::keepalive_loop() {
  auto self = shared_from_this();
  std::uint8_t stamp[8];
  // One ping at once gives the window auto-tuning a first RTT sample.
  proto::store_u64(stamp, now_ns());
  queue_control(proto::frame_type::ping, 0, 0, stamp);
  while (open_) {
    keepalive_timer_.expires_after(settings_.keepalive_interval);
    co_await keepalive_timer_.async_wait(use_tuple);
    if (!open_) co_return;
    const auto silent = clock_type::now() - last_received_;
    if (silent > settings_.idle_timeout) {
      close("peer silent for " +
            std::to_string(std::chrono::duration_cast<std::chrono::seconds>(silent).count()) +
            " s");
      co_return;
    }
    proto::store_u64(stamp, now_ns());
    queue_control(proto::frame_type::ping, 0, 0, stamp);
    if (!relayed_since_tick_) release_idle_memory();
    relayed_since_tick_ = false;
    pool_takes_at_tick_ = pool_.takes();
  }
}

void mux_session::handle_ping(const proto::frame_header& h, std::span<const std::uint8_t> payload) {
  if (h.flags & proto::flags::ack) {
    const std::uint64_t sent = proto::load_u64(payload.data());
    const std::uint64_t current = now_ns();
    if (sent <= current && current - sent < max_echo_age_ns) {
      auto sample = std::chrono::microseconds((current - sent) / 1000);
      rtt_ = rtt_.count() == 0 ? sample : (rtt_ * 7 + sample) / 8;
      // The minimum is the path's own delay; it expires so that a lengthened path is seen.
      const auto now = clock_type::now();
      if (min_rtt_.count() == 0 || sample <= min_rtt_ || now - min_rtt_taken_ > min_rtt_lifetime) {
        min_rtt_ = std::max(sample, std::chrono::microseconds(1));
        min_rtt_taken_ = now;
      }
    }
    return;
  }
  if (++pings_in_window_ > max_pings_per_second) return protocol_violation("PING flood");
  queue_control(proto::frame_type::ping, proto::flags::ack, 0, payload);
}

void mux_session::release_idle_memory() {
  // The read buffer's pages past its unparsed bytes hold nothing: hand them back to the kernel
  // (they come back as zero pages on the next large read). The loop is suspended, not reading.
  if (read_buffer_) {
    const auto page = std::uintptr_t(sysconf(_SC_PAGESIZE));
    const auto base = std::uintptr_t(read_buffer_.get());
    const auto from = (base + read_end_ + page - 1) & ~(page - 1);
    const auto to = (base + read_buffer_size) & ~(page - 1);
    if (from < to) madvise(reinterpret_cast<void*>(from), to - from, MADV_DONTNEED);
  }
  connection_.release_idle_buffers();  // TLS: the plaintext and records of earlier writes
  // The pool and the heap serve every data connection of the process: trim them only when no
  // connection took a chunk for a whole keepalive interval, not while another one is busy.
  if (pool_.takes() == pool_takes_at_tick_) {
    pool_.trim();
    malloc_trim(0);  // freed relay chunks sit inside the heap; return their pages too
  }
}

}  // namespace culvert::shared::net
