// The descriptor limit (RLIMIT_NOFILE) of a culvert server process: raised from its soft to its
// hard value at start (the supervisor, and each worker, which inherits it), and how many
// visitors a worker can then hold. Invariant: a worker's visitors never take the descriptors it
// keeps for itself (its channel, listener, data connections and TLS handshakes).
#pragma once

#include <cstdint>

namespace culvert::shared::util {

struct descriptor_limit {
  std::uint64_t before = 0;  // the soft limit found
  std::uint64_t now = 0;     // the soft limit after raising it
  int error = 0;             // errno of a failed getrlimit/setrlimit; `now` is then `before`
};

// Sets the soft RLIMIT_NOFILE to the hard one (no privilege needed).
descriptor_limit raise_descriptor_limit();

// Descriptors a worker keeps beside its visitors: a dozen of its own (stdio, channel, listener,
// event loop, logging), up to 16 data connections of its client and 32 TLS handshakes, and spare.
inline constexpr std::uint64_t worker_reserved_descriptors = 64;

// Visitors (one descriptor each) a worker with this limit can hold; 0 if none.
std::uint64_t visitors_that_fit(std::uint64_t limit);

}  // namespace culvert::shared::util
