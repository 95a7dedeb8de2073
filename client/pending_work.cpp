// The client's list of unfinished work: a map from lease id to name, shared with the leases.
#include "client/pending_work.hpp"

#include <utility>

namespace culvert::client {

pending_work::lease& pending_work::lease::operator=(lease&& other) noexcept {
  if (this != &other) {
    release();
    entries_ = std::move(other.entries_);
    id_ = other.id_;
  }
  return *this;
}

void pending_work::lease::release() noexcept {
  auto e = std::move(entries_);
  if (!e) return;
  e->held.erase(id_);
  if (e->held.empty() && e->on_empty) std::exchange(e->on_empty, nullptr)();
}

pending_work::lease pending_work::hold(std::string what) {
  const auto id = entries_->next++;
  entries_->held.emplace(id, std::move(what));
  return lease(entries_, id);
}

std::vector<std::string> pending_work::names() const {
  std::vector<std::string> out;
  for (const auto& [id, what] : entries_->held) out.push_back(what);
  return out;
}

void pending_work::when_empty(std::function<void()> callback) {
  entries_->on_empty = std::move(callback);
  if (entries_->on_empty && entries_->held.empty()) std::exchange(entries_->on_empty, nullptr)();
}

}  // namespace culvert::client
