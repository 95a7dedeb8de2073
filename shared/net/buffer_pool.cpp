// Relay chunk free list.
#include "shared/net/buffer_pool.hpp"

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

}  // namespace culvert::shared::net
