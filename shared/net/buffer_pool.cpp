// Relay chunk and pipe free lists.
#include "shared/net/buffer_pool.hpp"

#include <chrono>

namespace culvert::shared::net {

chunk buffer_pool::take() {
  ++outstanding_;
  ++takes_;
  if (idle_.empty()) return chunk(new std::uint8_t[chunk_size]);  // uninitialised on purpose
  chunk c = std::move(idle_.back());
  idle_.pop_back();
  return c;
}

void buffer_pool::give(chunk c) {
  if (!c) return;
  --outstanding_;
  if (idle_.size() < max_idle_) idle_.push_back(std::move(c));
}

std::optional<splice_pipe> buffer_pool::take_pipe() {
  ++takes_;
  if (idle_pipes_.empty()) {
    // After a refusal (descriptor limit, pipe quota) copy for a while instead of asking again
    // on every read.
    const auto now = std::chrono::steady_clock::now();
    if (now < pipes_refused_until_) return std::nullopt;
    auto p = splice_pipe::open();
    if (!p) pipes_refused_until_ = now + std::chrono::seconds(1);
    return p;
  }
  splice_pipe p = std::move(idle_pipes_.back());
  idle_pipes_.pop_back();
  return p;
}

void buffer_pool::give_pipe(splice_pipe p) {
  if (idle_pipes_.size() < max_idle_pipes) idle_pipes_.push_back(std::move(p));
}

}  // namespace culvert::shared::net
