// The client's connection to the local service for each new stream (mux_hooks::dial): one
// non-blocking connect to an address, bounded by the kernel's SYN retries, cancelled when the
// visitor resets its stream first. Runs in the client.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>

#include "client/client.hpp"

namespace culvert::client {

namespace asio = boost::asio;
using asio::ip::tcp;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

namespace {
// A non-blocking connect that, on loopback, has usually finished by the time connect() returns
// (the kernel runs the whole handshake before leaving the call): check at once with a
// zero-timeout poll and skip a pass through the event loop; otherwise wait for writability.
asio::awaitable<boost::system::error_code> connect_now_or_wait(tcp::socket& socket,
                                                               const tcp::endpoint& to) {
  boost::system::error_code ec;
  socket.non_blocking(true, ec);
  if (ec) co_return ec;
  const int fd = socket.native_handle();
  if (::connect(fd, to.data(), to.size()) == 0) co_return ec;
  if (errno != EINPROGRESS)
    co_return boost::system::error_code(errno, asio::error::get_system_category());
  pollfd ready{fd, POLLOUT, 0};
  if (::poll(&ready, 1, 0) != 1) {
    std::tie(ec) = co_await socket.async_wait(tcp::socket::wait_write, use_tuple);
    if (ec) co_return ec;
  }
  int error = 0;
  socklen_t length = sizeof(error);
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
  co_return boost::system::error_code(error, asio::error::get_system_category());
}
}  // namespace

asio::awaitable<std::optional<tcp::socket>> client::dial_local() {
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(options_.local_host, ec);
  std::optional<tcp::socket> socket;
  if (ec) {
    socket = co_await connect_to(options_.local_host, options_.local_port);  // a name: resolve
  } else {
    // An address (the usual case): one connect and nothing else. No timer and no operation group
    // per visitor (thousands of visitors arriving at once would leave the heap full of the holes
    // they free); the kernel bounds the wait instead: after two SYN retransmissions (about 7 s)
    // a silent local host counts as unreachable.
    socket.emplace(io_);
    const tcp::endpoint local(address, options_.local_port);
    socket->open(local.protocol(), ec);
    const int syn_retries = 2;
    if (!ec)
      ::setsockopt(socket->native_handle(), IPPROTO_TCP, TCP_SYNCNT, &syn_retries,
                   sizeof(syn_retries));
    if (!ec) ec = co_await connect_now_or_wait(*socket, local);
    if (ec == asio::error::operation_aborted) {
      // The multiplexer cancelled the dial: the visitor reset its stream meanwhile.
      spdlog::debug("connecting to {}: cancelled, the visitor is gone", options_.local_address());
      co_return std::nullopt;
    }
    if (ec) {
      spdlog::debug("connecting to {}: {}", options_.local_address(), ec.message());
      socket.reset();
    }  // TCP_NODELAY: set by the multiplexer when the stream starts relaying
  }
  if (!socket)
    spdlog::warn("cannot reach the local service at {}; visitor reset", options_.local_address());
  co_return socket;
}

}  // namespace culvert::client
