// The staged handshake places (see handshake_slots.hpp). Single-threaded, in the supervisor.
// Invariant: an entry is in exactly the list of its stage while listed, at the position it
// records; each list is ordered by arrival in that stage, so its front is the one to shed.
#include "supervisor/handshake_slots.hpp"

#include <algorithm>

namespace culvert::supervisor {

struct handshake_slots::entry {
  handshake_stage stage = handshake_stage::unidentified;
  std::function<void()> shed;
  bool listed = false;
  std::list<std::shared_ptr<entry>>::iterator position;
};

struct handshake_slots::state {
  std::array<std::uint32_t, 3> limit{};
  std::array<std::list<std::shared_ptr<entry>>, 3> members;
  std::uint64_t shed_total = 0;

  auto& list_of(handshake_stage s) { return members[std::size_t(s)]; }

  void unlist(entry& e) {
    if (!e.listed) return;
    list_of(e.stage).erase(e.position);
    e.listed = false;
  }

  // Makes room for one more in `stage`: sheds the oldest while the stage is full.
  void make_room(handshake_stage stage) {
    auto& list = list_of(stage);
    while (!list.empty() && list.size() >= limit[std::size_t(stage)]) {
      auto victim = list.front();
      unlist(*victim);
      ++shed_total;
      // Taken out first: shed() may run code that releases tickets.
      if (auto shed = std::move(victim->shed)) shed();
    }
  }

  void enlist(const std::shared_ptr<entry>& e, handshake_stage stage) {
    make_room(stage);
    e->stage = stage;
    auto& list = list_of(stage);
    e->position = list.insert(list.end(), e);
    e->listed = true;
  }
};

handshake_slots::handshake_slots(limits l) : state_(std::make_shared<state>()) {
  // A limit of 0 would shed every newcomer at once; one place is the least that works.
  state_->limit = {std::max<std::uint32_t>(l.unidentified, 1),
                   std::max<std::uint32_t>(l.new_tunnel, 1),
                   std::max<std::uint32_t>(l.known_tunnel, 1)};
}

handshake_slots::ticket handshake_slots::admit(std::function<void()> shed) {
  auto e = std::make_shared<entry>();
  e->shed = std::move(shed);
  state_->enlist(e, handshake_stage::unidentified);
  return ticket(state_, std::move(e));
}

void handshake_slots::shed_all() {
  for (auto& list : state_->members)
    while (!list.empty()) {
      auto victim = list.front();
      state_->unlist(*victim);
      if (auto shed = std::move(victim->shed)) shed();
    }
}

std::uint32_t handshake_slots::count(handshake_stage stage) const {
  return std::uint32_t(state_->list_of(stage).size());
}

std::uint64_t handshake_slots::shed_total() const {
  return state_->shed_total;
}

handshake_slots::ticket& handshake_slots::ticket::operator=(ticket&& other) noexcept {
  if (this != &other) {
    release();
    state_ = std::move(other.state_);
    entry_ = std::move(other.entry_);
  }
  return *this;
}

bool handshake_slots::ticket::held() const {
  return entry_ && entry_->listed;
}

bool handshake_slots::ticket::move_to(handshake_stage stage) {
  if (!held()) return false;
  if (entry_->stage == stage) return true;
  state_->unlist(*entry_);
  state_->enlist(entry_, stage);
  return true;
}

void handshake_slots::ticket::release() noexcept {
  if (!entry_) return;
  state_->unlist(*entry_);
  entry_->shed = nullptr;
  entry_.reset();
  state_.reset();
}

}  // namespace culvert::supervisor
