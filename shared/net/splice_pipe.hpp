// A kernel pipe that moves stream bytes from one TCP socket to another with splice(2), so they
// never pass through user space: the clear-text relay path of every culvert process (TLS must see
// each byte, so TLS data connections and observed http streams keep the copying path).
// Invariant: a pipe is given back for reuse only when empty; one holding bytes dies with its owner.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <optional>

namespace culvert::shared::net {

// False when the environment has CULVERT_NO_SPLICE=1: every process copies instead (an escape
// hatch for a kernel whose splice misbehaves, and the bench's copy-path comparison).
bool splice_enabled();

class splice_pipe {
 public:
  // A new non-blocking pipe, enlarged when the kernel allows it; nullopt when the kernel refuses
  // one (the descriptor limit): the caller copies instead.
  static std::optional<splice_pipe> open();

  splice_pipe(splice_pipe&&) noexcept;
  splice_pipe& operator=(splice_pipe&&) noexcept;
  splice_pipe(const splice_pipe&) = delete;
  splice_pipe& operator=(const splice_pipe&) = delete;
  ~splice_pipe();

  // Up to `max` bytes from the socket into the pipe: bytes moved, 0 at the socket's end of stream,
  // -1 with errno (EAGAIN: nothing to read, or the pipe has no free slot).
  ssize_t fill_from(int socket, std::size_t max);
  // Up to `max` bytes of the pipe into the socket: bytes moved or -1 with errno (EAGAIN: the
  // socket is full).
  ssize_t drain_to(int socket, std::size_t max);

 private:
  splice_pipe(int read_end, int write_end) : read_end_(read_end), write_end_(write_end) {}
  int read_end_ = -1, write_end_ = -1;
};

}  // namespace culvert::shared::net
