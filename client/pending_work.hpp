// What the client has started and not yet seen finish, by name: its coroutines and the objects
// whose coroutines keep them alive (a multiplexer, a control link). Runs in the culvert CLI, on
// its io_context thread. Shutdown waits for this list to empty and names what is left if it
// does not (the forced stage).
// Invariant: an entry changes only through a lease (taken by hold, returned by its destructor),
// and the list is shared with every lease, so a lease that outlives the client (in a coroutine
// frame destroyed with the io_context) is still safe to destroy.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace culvert::client {

class pending_work {
  struct entries {
    std::map<std::uint64_t, std::string> held;  // by the order they were taken
    std::uint64_t next = 0;
    std::function<void()> on_empty;
  };

 public:
  class lease {
   public:
    lease(lease&& other) noexcept = default;
    lease& operator=(lease&& other) noexcept;
    lease(const lease&) = delete;
    lease& operator=(const lease&) = delete;
    ~lease() { release(); }
    void release() noexcept;

   private:
    friend class pending_work;
    lease(std::shared_ptr<entries> e, std::uint64_t id) : entries_(std::move(e)), id_(id) {}

    std::shared_ptr<entries> entries_;  // empty once released or moved from
    std::uint64_t id_ = 0;
  };

  pending_work() : entries_(std::make_shared<entries>()) {}

  lease hold(std::string what);
  bool empty() const { return entries_->held.empty(); }
  std::vector<std::string> names() const;
  // Called once, when the last lease is returned (at once if none is held); an empty function
  // takes back an earlier one.
  void when_empty(std::function<void()>);

 private:
  std::shared_ptr<entries> entries_;
};

}  // namespace culvert::client
