// The supervisor <-> worker channel over a real socketpair: messages with and without a
// descriptor (a pipe, a connected TCP socket), the size limits, and every malformed message the
// receiver must refuse without leaking what came with it: too long, too many descriptors, a
// control message of another kind, control data cut short (MSG_CTRUNC, also when no descriptor is
// free), then the next message read as usual. Also the peer's end and a full socket buffer.
#include "shared/ipc/fd_channel.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "tests/support/loopback_pair.hpp"
#include "tests/support/rethrow_on_error.hpp"
#include "tests/support/run_coroutine.hpp"

namespace asio = boost::asio;
namespace ipc = culvert::shared::ipc;
using boost::system::error_code;
using culvert::tests::run_coroutine;

namespace {

using received = std::variant<ipc::channel_message, error_code>;

struct channel_pair {
  asio::io_context io;
  ipc::channel_socket sender{io}, receiver{io};
  channel_pair() { ipc::make_channel_pair(sender, receiver); }

  error_code send(std::string_view payload, int fd = -1) {
    return run_coroutine(io, ipc::send_message(sender, payload, fd));
  }
  received receive() { return run_coroutine(io, ipc::receive_message(receiver)); }
};

// Closes a descriptor at scope exit.
struct fd_guard {
  int fd = -1;
  explicit fd_guard(int f) : fd(f) {}
  fd_guard(const fd_guard&) = delete;
  fd_guard& operator=(const fd_guard&) = delete;
  ~fd_guard() {
    if (fd >= 0) ::close(fd);
  }
};

struct pipe_pair {
  int read_end = -1, write_end = -1;
  pipe_pair() {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    read_end = fds[0];
    write_end = fds[1];
  }
  ~pipe_pair() {
    ::close(read_end);
    ::close(write_end);
  }
};

std::size_t open_descriptors() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd"))
    ++n;
  return n;
}

ino_t inode_of(int fd) {
  struct stat info {};
  REQUIRE(::fstat(fd, &info) == 0);
  return info.st_ino;
}

const ipc::channel_message& message_of(const received& r) {
  const auto* m = std::get_if<ipc::channel_message>(&r);
  INFO((m ? std::string() : std::get<error_code>(r).message()));
  REQUIRE(m != nullptr);
  return *m;
}

error_code error_of(const received& r) {
  const auto* ec = std::get_if<error_code>(&r);
  REQUIRE(ec != nullptr);  // a message came instead
  return *ec;
}

// A raw sendmsg of `payload` with `fds` in one SCM_RIGHTS message: what a broken or hostile peer
// may send, which send_message never would.
void send_raw(ipc::channel_socket& socket, const std::string& payload, std::vector<int> fds = {}) {
  iovec iov{const_cast<char*>(payload.data()), payload.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  REQUIRE(::sendmsg(socket.native_handle(), &msg, MSG_NOSIGNAL) ==
          static_cast<ssize_t>(payload.size()));
}

// Takes every descriptor this process may still open, and gives them back at scope exit: while
// it lives, a descriptor sent to us cannot be installed. Nothing may be checked meanwhile (see
// the test below); stop_errno says why the last dup failed (EMFILE: none left).
struct descriptors_exhausted {
  rlimit before{};
  std::vector<int> held;
  int stop_errno = 0;
  descriptors_exhausted() {
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &before) == 0);
    int highest = 0;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd"))
      highest = std::max(highest, std::stoi(entry.path().filename().string()));
    rlimit low = before;
    low.rlim_cur = rlim_t(highest) + 1;
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
    for (int fd; (fd = ::fcntl(0, F_DUPFD_CLOEXEC, 0)) >= 0;) held.push_back(fd);  // the gaps
    stop_errno = errno;
  }
  ~descriptors_exhausted() {
    for (int fd : held) ::close(fd);
    ::setrlimit(RLIMIT_NOFILE, &before);
  }
};

}  // namespace

TEST_CASE("fd_channel: a message without a descriptor arrives whole", "[fd_channel]") {
  channel_pair c;
  CHECK_FALSE(c.send("started 1234"));
  const std::string largest(ipc::max_channel_message, 'x');
  CHECK_FALSE(c.send(largest));
  auto first = c.receive();
  CHECK(message_of(first).payload == "started 1234");
  CHECK(message_of(first).fd == -1);
  CHECK(message_of(c.receive()).payload == largest);
}

TEST_CASE("fd_channel: the sender refuses an empty or oversized payload", "[fd_channel]") {
  channel_pair c;
  CHECK(c.send("") == asio::error::message_size);
  CHECK(c.send(std::string(ipc::max_channel_message + 1, 'x')) == asio::error::message_size);
  // Nothing was sent: the next message is the first to arrive.
  CHECK_FALSE(c.send("after"));
  CHECK(message_of(c.receive()).payload == "after");
}

TEST_CASE("fd_channel: a descriptor arrives as a new one, close-on-exec", "[fd_channel]") {
  channel_pair c;
  pipe_pair p;
  CHECK_FALSE(c.send("pipe", p.write_end));
  auto got = c.receive();
  const fd_guard fd(message_of(got).fd);
  REQUIRE(fd.fd >= 0);
  CHECK(message_of(got).payload == "pipe");
  CHECK(fd.fd != p.write_end);                         // the sender keeps its own
  CHECK(::fcntl(p.write_end, F_GETFD) != -1);          // still open there
  CHECK(inode_of(fd.fd) == inode_of(p.write_end));     // the same pipe
  CHECK((::fcntl(fd.fd, F_GETFD) & FD_CLOEXEC) != 0);  // MSG_CMSG_CLOEXEC: no child inherits it
  REQUIRE(::write(fd.fd, "via", 3) == 3);
  char buffer[3];
  REQUIRE(::read(p.read_end, buffer, 3) == 3);
  CHECK(std::string(buffer, 3) == "via");
}

TEST_CASE("fd_channel: a connected socket handed over carries bytes", "[fd_channel]") {
  channel_pair c;
  auto [visitor, accepted] = culvert::tests::loopback_pair(c.io);
  CHECK_FALSE(c.send("adopt", accepted.native_handle()));
  accepted.close();  // as the supervisor does once the worker has it
  auto got = c.receive();
  asio::ip::tcp::socket adopted(c.io, asio::ip::tcp::v4(), message_of(got).fd);
  asio::write(adopted, asio::buffer("hello", 5));
  char buffer[5];
  asio::read(visitor, asio::buffer(buffer));
  CHECK(std::string(buffer, 5) == "hello");
}

TEST_CASE("fd_channel: sending a descriptor that is not open fails", "[fd_channel]") {
  channel_pair c;
  const int not_open = ::fcntl(0, F_DUPFD, 0);
  REQUIRE(not_open >= 0);
  ::close(not_open);
  CHECK(c.send("bad", not_open) == error_code(EBADF, boost::system::system_category()));
}

TEST_CASE("fd_channel: a message longer than the limit is refused, then the next one read",
          "[fd_channel]") {
  // One byte over (what the receive buffer still holds whole) and far over (cut short: MSG_TRUNC).
  const auto size = GENERATE(ipc::max_channel_message + 1, std::size_t(4000));
  channel_pair c;
  send_raw(c.sender, std::string(size, 'y'));
  CHECK_FALSE(c.send("next"));
  CHECK(error_of(c.receive()) == asio::error::invalid_argument);
  CHECK(message_of(c.receive()).payload == "next");
}

TEST_CASE("fd_channel: more than one descriptor is refused and none is kept", "[fd_channel]") {
  // Two fit the receiver's control buffer (refused as too many); five do not (MSG_CTRUNC: the
  // kernel installs the four that fit, the receiver closes them).
  const auto count = GENERATE(2, 5);
  channel_pair c;
  pipe_pair p;
  const auto before = open_descriptors();
  send_raw(c.sender, "many", std::vector<int>(std::size_t(count), p.write_end));
  CHECK_FALSE(c.send("next"));
  CHECK(error_of(c.receive()) == asio::error::invalid_argument);
  CHECK(open_descriptors() == before);
  auto next = c.receive();
  CHECK(message_of(next).payload == "next");
  CHECK(message_of(next).fd == -1);
}

TEST_CASE("fd_channel: a descriptor without a payload is refused and closed", "[fd_channel]") {
  channel_pair c;
  pipe_pair p;
  const auto before = open_descriptors();
  send_raw(c.sender, "", {p.write_end});
  CHECK(error_of(c.receive()) == asio::error::invalid_argument);
  CHECK(open_descriptors() == before);
}

TEST_CASE("fd_channel: a control message of another kind is refused", "[fd_channel]") {
  // With SO_PASSCRED the kernel attaches the sender's credentials (SCM_CREDENTIALS) to every
  // message: not what this channel carries. A descriptor that came along is closed.
  channel_pair c;
  const int on = 1;
  REQUIRE(::setsockopt(c.receiver.native_handle(), SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) == 0);
  pipe_pair p;
  const auto before = open_descriptors();
  CHECK_FALSE(c.send("creds"));
  CHECK_FALSE(c.send("creds and fd", p.write_end));
  CHECK(error_of(c.receive()) == asio::error::invalid_argument);
  CHECK(error_of(c.receive()) == asio::error::invalid_argument);
  CHECK(open_descriptors() == before);
}

TEST_CASE("fd_channel: a descriptor that finds none free here is refused (MSG_CTRUNC)",
          "[fd_channel]") {
  channel_pair c;
  pipe_pair p;
  // UBSan's vptr check opens a pipe the first time it meets a polymorphic type (Catch2's
  // expressions, Asio's services): with no descriptor free it reports a false "invalid vptr"
  // (as test_descriptor_limit notes for the worker). So every type used while descriptors are
  // exhausted is met once before, in a full receive, and the checks wait until after.
  CHECK_FALSE(c.send("warm-up", p.write_end));
  {
    auto warm_up = c.receive();
    const fd_guard fd(message_of(warm_up).fd);
  }
  CHECK_FALSE(c.send("lost", p.write_end));
  CHECK_FALSE(c.send("kept", p.write_end));
  received lost;
  int stop_errno = 0;
  {
    const descriptors_exhausted full;
    lost = c.receive();
    stop_errno = full.stop_errno;
  }
  CHECK(stop_errno == EMFILE);
  // The kernel could not install the descriptor: it dropped it and marked the message MSG_CTRUNC.
  CHECK(error_of(lost) == asio::error::invalid_argument);
  auto next = c.receive();
  const fd_guard fd(message_of(next).fd);
  CHECK(message_of(next).payload == "kept");
  CHECK(fd.fd >= 0);
}

TEST_CASE("fd_channel: the peer's end reads as eof, after what it sent", "[fd_channel]") {
  channel_pair c;
  CHECK_FALSE(c.send("last words"));
  c.sender.close();
  CHECK(message_of(c.receive()).payload == "last words");
  CHECK(error_of(c.receive()) == asio::error::eof);
  CHECK(error_of(c.receive()) == asio::error::eof);  // and stays so
}

TEST_CASE("fd_channel: a receive waiting for a message sees the peer's end", "[fd_channel]") {
  channel_pair c;
  std::optional<received> got;
  asio::co_spawn(
      c.io, [&]() -> asio::awaitable<void> { got = co_await ipc::receive_message(c.receiver); },
      culvert::tests::rethrow_on_error);
  c.io.poll();  // the receive now waits
  REQUIRE_FALSE(got);
  c.sender.close();
  c.io.run_for(std::chrono::seconds(5));
  REQUIRE(got);
  CHECK(error_of(*got) == asio::error::eof);
}

TEST_CASE("fd_channel: a zero-length message reads as the peer's end", "[fd_channel]") {
  // SOCK_SEQPACKET's recvmsg returns 0 for both; send_message never sends an empty payload.
  channel_pair c;
  send_raw(c.sender, "");
  CHECK(error_of(c.receive()) == asio::error::eof);
}

TEST_CASE("fd_channel: sending to a closed peer is an error, not SIGPIPE", "[fd_channel]") {
  channel_pair c;
  c.receiver.close();
  const auto ec = c.send("anyone?");
  CHECK(ec == error_code(EPIPE, boost::system::system_category()));
}

TEST_CASE("fd_channel: a send waits while the socket buffer is full", "[fd_channel]") {
  channel_pair c;
  std::size_t queued = 0;
  while (::send(c.sender.native_handle(), "fill", 4, MSG_DONTWAIT | MSG_NOSIGNAL) == 4) ++queued;
  REQUIRE(errno == EAGAIN);
  REQUIRE(queued > 0);

  error_code sent = asio::error::would_block;
  bool done = false;
  asio::co_spawn(
      c.io,
      [&]() -> asio::awaitable<void> {
        sent = co_await ipc::send_message(c.sender, "after the fill");
        done = true;
      },
      culvert::tests::rethrow_on_error);
  c.io.poll();
  CHECK_FALSE(done);  // waits for room, does not fail with EAGAIN

  std::size_t fills = 0;
  std::string last;
  asio::co_spawn(
      c.io,
      [&]() -> asio::awaitable<void> {
        for (;;) {
          auto r = co_await ipc::receive_message(c.receiver);
          const auto& m = message_of(r);
          if (m.payload != "fill") {
            last = m.payload;
            co_return;
          }
          ++fills;
        }
      },
      culvert::tests::rethrow_on_error);
  c.io.restart();
  c.io.run_for(std::chrono::seconds(10));
  CHECK(done);
  CHECK_FALSE(sent);
  CHECK(fills == queued);  // every message in order, none lost
  CHECK(last == "after the fill");
}

TEST_CASE("fd_channel: closing our end cancels a waiting receive", "[fd_channel]") {
  channel_pair c;
  std::optional<received> got;
  asio::co_spawn(
      c.io, [&]() -> asio::awaitable<void> { got = co_await ipc::receive_message(c.receiver); },
      culvert::tests::rethrow_on_error);
  c.io.poll();
  c.receiver.close();
  c.io.run_for(std::chrono::seconds(5));
  REQUIRE(got);
  CHECK(error_of(*got) == asio::error::operation_aborted);
}
