// A per-process free list of relay buffers, so relaying allocates nothing per chunk: fixed-size
// chunks for the copying path, and empty kernel pipes for the splice path.
// Single-threaded (each culvert process runs one io_context thread).
// Invariant: at most max_idle chunks and max_idle_pipes pipes are kept; the rest go back to the
// allocator or are closed, so memory and descriptors held while idle stay bounded. Chunks in use
// are counted against a budget: take() never fails (bytes a peer was allowed to send are kept),
// but past the budget the multiplexer stops reading, granting credit and opening streams.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "shared/net/splice_pipe.hpp"

namespace culvert::shared::net {

using chunk = std::unique_ptr<std::uint8_t[]>;

class buffer_pool {
 public:
  static constexpr std::size_t chunk_size = 64 * 1024;
  // A 1 MiB pipe counts against its user's fs.pipe-user-pages-soft (64 MiB by default, shared by
  // every worker of the account) even when empty: keep few.
  static constexpr std::size_t max_idle_pipes = 2;

  static constexpr std::size_t default_budget = 128 * 1024 * 1024;

  explicit buffer_pool(std::size_t max_idle = 16) : max_idle_(max_idle) {}
  // Bytes of chunks in use (relay buffers of every stream of the process) counted as full.
  void set_budget(std::size_t bytes) { budget_ = bytes; }
  std::size_t budget() const { return budget_; }
  bool over_budget() const { return outstanding_ * chunk_size >= budget_; }
  chunk take();
  void give(chunk c);
  // An empty pipe, or nullopt when the kernel refuses one (then copy instead).
  std::optional<splice_pipe> take_pipe();
  void give_pipe(splice_pipe p);  // only an empty one
  // Drops every idle chunk and pipe (called when the process goes idle).
  void trim() {
    idle_.clear();
    idle_pipes_.clear();
  }
  std::size_t outstanding() const { return outstanding_; }
  // Chunks handed out so far: unchanged between two looks means nobody relayed in between.
  std::uint64_t takes() const { return takes_; }

 private:
  std::size_t max_idle_;
  std::size_t outstanding_ = 0;
  std::size_t budget_ = default_budget;
  std::uint64_t takes_ = 0;
  std::vector<chunk> idle_;
  std::vector<splice_pipe> idle_pipes_;
  std::chrono::steady_clock::time_point pipes_refused_until_{};
};

}  // namespace culvert::shared::net
