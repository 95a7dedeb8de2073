// splice(2) through a pipe: the page references move, the bytes are not copied.
#include "shared/net/splice_pipe.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <string_view>
#include <utility>

namespace culvert::shared::net {

namespace {
// Slots (one per page of size) for a full window of segments of any size, so a stream whose
// socket is full rarely overflows it into the copying path. The kernel may refuse the size to
// an unprivileged user (fs.pipe-max-size, fs.pipe-user-pages-soft).
constexpr int wanted_pipe_size = 1024 * 1024;
// Past fs.pipe-user-pages-soft the kernel hands out two-slot pipes: a splice per segment would
// cost more than the copy it saves, so such a pipe is refused.
constexpr int least_pipe_size = 64 * 1024;
}  // namespace

bool splice_enabled() {
  static const bool enabled = [] {
    const char* off = std::getenv("CULVERT_NO_SPLICE");
    return !(off && std::string_view(off) == "1");
  }();
  return enabled;
}

std::optional<splice_pipe> splice_pipe::open() {
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return std::nullopt;
  splice_pipe pipe(fds[0], fds[1]);
  if (::fcntl(fds[1], F_SETPIPE_SZ, wanted_pipe_size) < 0 &&
      ::fcntl(fds[1], F_GETPIPE_SZ) < least_pipe_size)
    return std::nullopt;
  return pipe;
}

splice_pipe::splice_pipe(splice_pipe&& other) noexcept
    : read_end_(std::exchange(other.read_end_, -1)),
      write_end_(std::exchange(other.write_end_, -1)) {}

splice_pipe& splice_pipe::operator=(splice_pipe&& other) noexcept {
  if (this != &other) {
    if (read_end_ >= 0) ::close(read_end_);
    if (write_end_ >= 0) ::close(write_end_);
    read_end_ = std::exchange(other.read_end_, -1);
    write_end_ = std::exchange(other.write_end_, -1);
  }
  return *this;
}

splice_pipe::~splice_pipe() {
  if (read_end_ >= 0) ::close(read_end_);
  if (write_end_ >= 0) ::close(write_end_);
}

ssize_t splice_pipe::fill_from(int socket, std::size_t max) {
  return ::splice(socket, nullptr, write_end_, nullptr, max, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
}

ssize_t splice_pipe::drain_to(int socket, std::size_t max) {
  return ::splice(read_end_, nullptr, socket, nullptr, max, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
}

}  // namespace culvert::shared::net
