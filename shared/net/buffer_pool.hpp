// A per-process free list of fixed-size relay chunks, so relaying allocates nothing per chunk.
// Single-threaded (each culvert process runs one io_context thread).
// Invariant: at most max_idle chunks are kept; the rest go back to the allocator, so memory held
// while idle stays bounded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace culvert::shared::net {

using chunk = std::unique_ptr<std::uint8_t[]>;

class buffer_pool {
 public:
  static constexpr std::size_t chunk_size = 64 * 1024;

  explicit buffer_pool(std::size_t max_idle = 16) : max_idle_(max_idle) {}
  chunk take();
  void give(chunk c);
  // Drops every idle chunk (called when the process goes idle).
  void trim() { idle_.clear(); }
  std::size_t idle() const { return idle_.size(); }
  std::size_t outstanding() const { return outstanding_; }
  // Chunks handed out so far: unchanged between two looks means nobody relayed in between.
  std::uint64_t takes() const { return takes_; }

 private:
  std::size_t max_idle_;
  std::size_t outstanding_ = 0;
  std::uint64_t takes_ = 0;
  std::vector<chunk> idle_;
};

}  // namespace culvert::shared::net
