// The client's per-user state file: the tunnel id and reclaim secret of the last tunnel opened
// with the same server, kind, local address and subdomain, so that a restarted client gets its
// domain and port back within the server's grace period. Runs in the culvert CLI.
// Invariant: the file is written whole (a temporary file created new, then renamed), readable by
// its owner only, in a directory that belongs to the user and that no one else may write;
// one running client at a time uses it (an flock on a lock file beside it), so a second client
// started with the same arguments opens a tunnel of its own instead of taking over the first's.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "shared/protocol/messages.hpp"

namespace culvert::client {

struct saved_tunnel {
  std::uint64_t tunnel_id = 0;
  shared::protocol::secret_bytes secret{};
  std::string domain;
};

class state_file {
 public:
  // dir empty = disabled (load finds nothing, save does nothing). `key` names the tunnel setup.
  state_file(std::string dir, const std::string& key);
  ~state_file();
  state_file(const state_file&) = delete;
  state_file& operator=(const state_file&) = delete;
  std::optional<saved_tunnel> load() const;
  // Returns false (after logging why) if the file could not be written.
  bool save(const saved_tunnel&) const;
  const std::string& path() const { return path_; }

 private:
  std::string dir_, path_;
  int lock_fd_ = -1;
};

}  // namespace culvert::client
