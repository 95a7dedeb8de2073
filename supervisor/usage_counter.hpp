// Counts what each key holds (tunnels per token name, tunnels or handshakes per source address)
// against a limit. Runs in the supervisor, single-threaded.
// Invariant: a count changes only through a lease (taken by try_acquire, returned by its
// destructor), so it can neither leak nor go negative; keys at zero are erased (bounded memory).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace culvert::supervisor {

class usage_counter {
  using counts = std::map<std::string, std::uint32_t, std::less<>>;

 public:
  // One unit held under one key. Shares the counts, so a lease that outlives its counter (in a
  // coroutine frame destroyed with the io_context) is still safe to destroy.
  class lease {
   public:
    lease(lease&& other) noexcept = default;
    lease& operator=(lease&& other) noexcept;
    lease(const lease&) = delete;
    lease& operator=(const lease&) = delete;
    ~lease() { release(); }
    const std::string& key() const { return key_; }

   private:
    friend class usage_counter;
    lease(std::shared_ptr<counts> c, std::string key)
        : counts_(std::move(c)), key_(std::move(key)) {}
    void release() noexcept;

    std::shared_ptr<counts> counts_;  // empty once moved from
    std::string key_;
  };

  usage_counter() : counts_(std::make_shared<counts>()) {}

  // A lease if `key` holds fewer than `limit`, else nullopt (limit 0 refuses everything).
  std::optional<lease> try_acquire(std::string key, std::uint32_t limit);
  std::uint32_t count(std::string_view key) const;
  std::size_t keys() const { return counts_->size(); }

 private:
  std::shared_ptr<counts> counts_;
};

}  // namespace culvert::supervisor
