// What a connection in the handshake holds: its staged place (handshake_slots) and its source
// address's share of --max-handshakes-per-address. Supervisor only.
// Invariant: both are given back while a bad token waits out its delay, and before the socket
// leaves the handshake (to a control link or a worker).
#pragma once

#include <optional>

#include "supervisor/handshake_slots.hpp"
#include "supervisor/usage_counter.hpp"

namespace culvert::supervisor {

struct handshake_place {
  handshake_slots::ticket ticket;
  std::optional<usage_counter::lease> per_address;
  void release() {
    ticket.release();
    per_address.reset();
  }
};

}  // namespace culvert::supervisor
