// See cloexec_socket.hpp.
#include "shared/net/cloexec_socket.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>

namespace culvert::shared::net {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

namespace {

error_code last_error() {
  return error_code(errno, boost::system::system_category());
}

}  // namespace

tcp::acceptor open_listener(asio::io_context& io, const tcp::endpoint& endpoint, int backlog,
                            error_code& error) {
  tcp::acceptor acceptor(io);
  const int fd = ::socket(endpoint.protocol().family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    error = last_error();
    return acceptor;
  }
  acceptor.assign(endpoint.protocol(), fd, error);
  if (error) {
    ::close(fd);
    return acceptor;
  }
  acceptor.set_option(tcp::acceptor::reuse_address(true), error);
  if (!error) acceptor.bind(endpoint, error);
  if (!error) acceptor.listen(backlog, error);
  if (!error) acceptor.native_non_blocking(true, error);
  if (error) {
    error_code ignored;
    acceptor.close(ignored);
  }
  return acceptor;
}

asio::awaitable<std::tuple<error_code, tcp::socket>> accept_cloexec(tcp::acceptor& listener) {
  auto executor = co_await asio::this_coro::executor;
  error_code error;
  // A listener inherited from another process may still block; accept4 must not.
  if (!listener.native_non_blocking()) listener.native_non_blocking(true, error);
  if (error) co_return std::tuple{error, tcp::socket(executor)};
  for (;;) {
    sockaddr_storage peer{};  // its family names the protocol, without a getsockname
    socklen_t peer_size = sizeof(peer);
    const int fd = ::accept4(listener.native_handle(), reinterpret_cast<sockaddr*>(&peer),
                             &peer_size, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
      tcp::socket socket(executor);
      socket.assign(peer.ss_family == AF_INET6 ? tcp::v6() : tcp::v4(), fd, error);
      if (error) ::close(fd);
      co_return std::tuple{error, std::move(socket)};
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      co_return std::tuple{last_error(), tcp::socket(executor)};
    auto [ec] =
        co_await listener.async_wait(tcp::acceptor::wait_read, asio::as_tuple(asio::use_awaitable));
    if (ec) co_return std::tuple{ec, tcp::socket(executor)};
  }
}

}  // namespace culvert::shared::net
