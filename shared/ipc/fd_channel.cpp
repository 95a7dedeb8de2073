// sendmsg/recvmsg with SCM_RIGHTS on a non-blocking seqpacket socket, waited on through Asio.
#include "shared/ipc/fd_channel.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <cstring>

namespace culvert::shared::ipc {

namespace asio = boost::asio;
using boost::system::error_code;

channel_protocol unix_seqpacket() {
  return channel_protocol(AF_UNIX, 0);
}

void make_channel_pair(channel_socket& a, channel_socket& b) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0)
    throw boost::system::system_error(error_code(errno, boost::system::system_category()),
                                      "socketpair(AF_UNIX, SOCK_SEQPACKET)");
  a.assign(unix_seqpacket(), fds[0]);
  b.assign(unix_seqpacket(), fds[1]);
}

asio::awaitable<error_code> send_message(channel_socket& socket, std::string_view payload, int fd) {
  if (payload.empty() || payload.size() > max_channel_message)
    co_return asio::error::make_error_code(asio::error::message_size);
  for (;;) {
    iovec iov{const_cast<char*>(payload.data()), payload.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    if (fd >= 0) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
      cmsg->cmsg_level = SOL_SOCKET;
      cmsg->cmsg_type = SCM_RIGHTS;
      cmsg->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    }
    ssize_t n = ::sendmsg(socket.native_handle(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n == static_cast<ssize_t>(payload.size())) co_return error_code{};
    if (n >= 0) co_return asio::error::make_error_code(asio::error::message_size);
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      co_return error_code(errno, boost::system::system_category());
    auto [ec] =
        co_await socket.async_wait(channel_socket::wait_write, asio::as_tuple(asio::use_awaitable));
    if (ec) co_return ec;
  }
}

asio::awaitable<std::variant<channel_message, error_code>> receive_message(channel_socket& socket) {
  for (;;) {
    char data[max_channel_message + 1];
    iovec iov{data, sizeof(data)};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    // Room for a few descriptors so that a peer sending too many cannot make us leak them.
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = ::recvmsg(socket.native_handle(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      auto [ec] = co_await socket.async_wait(channel_socket::wait_read,
                                             asio::as_tuple(asio::use_awaitable));
      if (ec) co_return ec;
      continue;
    }
    if (n < 0) co_return error_code(errno, boost::system::system_category());

    // Collect every descriptor that arrived before judging the message, so none leaks.
    int fds[4];
    int fd_count = 0;
    bool bad_control = (msg.msg_flags & MSG_CTRUNC) != 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
        bad_control = true;
        continue;
      }
      std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count && fd_count < 4; ++i)
        std::memcpy(&fds[fd_count++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
    auto close_all = [&] {
      for (int i = 0; i < fd_count; ++i) ::close(fds[i]);
    };
    if (n == 0 && fd_count == 0) co_return asio::error::make_error_code(asio::error::eof);
    if (bad_control || fd_count > 1 || (msg.msg_flags & MSG_TRUNC) ||
        std::size_t(n) > max_channel_message || n == 0) {
      close_all();
      co_return asio::error::make_error_code(asio::error::invalid_argument);
    }
    co_return channel_message{std::string(data, std::size_t(n)), fd_count ? fds[0] : -1};
  }
}

}  // namespace culvert::shared::ipc
