// The supervisor's places for handshakes in progress, in stages with a limit each: a connection
// starts "unidentified" (nothing read yet); its first frame moves it to "new tunnel" (INIT) or
// "known tunnel" (a reclaim proving a live tunnel's id and secret). A full stage sheds its oldest
// member to make room, so idle connections cannot keep a newcomer out. Runs in the supervisor.
// Invariant: a place is held only through a ticket; a shed ticket's shed() ran exactly once.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>

namespace culvert::supervisor {

enum class handshake_stage { unidentified, new_tunnel, known_tunnel };

class handshake_slots {
  struct entry;
  struct state;

 public:
  struct limits {
    std::uint32_t unidentified = 256, new_tunnel = 256, known_tunnel = 256;
  };

  // One connection's place. Shares the state, so a ticket that outlives its handshake_slots (in a
  // coroutine frame destroyed with the io_context) is still safe to destroy.
  class ticket {
   public:
    ticket(ticket&&) noexcept = default;
    ticket& operator=(ticket&&) noexcept;
    ticket(const ticket&) = delete;
    ticket& operator=(const ticket&) = delete;
    ~ticket() { release(); }
    // Moves to the back of `stage` (shedding that stage's oldest if it is full). False if this
    // ticket was shed or released already: its connection is on its way out.
    bool move_to(handshake_stage);
    void release() noexcept;  // gives the place back; shed() will not be called any more
    bool held() const;

   private:
    friend class handshake_slots;
    ticket(std::shared_ptr<state> s, std::shared_ptr<entry> e)
        : state_(std::move(s)), entry_(std::move(e)) {}
    std::shared_ptr<state> state_;
    std::shared_ptr<entry> entry_;
  };

  handshake_slots() : handshake_slots(limits{}) {}
  explicit handshake_slots(limits);

  // A place in the unidentified stage, shedding its oldest member first if it is full. `shed`
  // must end the connection's handshake promptly (the supervisor shuts the socket down).
  ticket admit(std::function<void()> shed);
  // Sheds every place (shutdown): each shed() runs once; not counted in shed_total().
  void shed_all();
  std::uint32_t count(handshake_stage) const;
  std::uint64_t shed_total() const;

 private:
  std::shared_ptr<state> state_;
};

}  // namespace culvert::supervisor
