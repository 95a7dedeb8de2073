// Transport: plain TCP or TLS behind the same coroutine interface. The TLS half (handshakes,
// record gathering, error texts) is in transport_tls.cpp, which the clear-only build leaves out.
#include "shared/net/transport.hpp"

#include <sys/socket.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

namespace culvert::shared::net {

namespace asio = boost::asio;
using boost::system::error_code;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

transport::transport(asio::ip::tcp::socket plain) : plain_(std::move(plain)) {}

transport::transport(transport&&) noexcept = default;
transport& transport::operator=(transport&&) noexcept = default;
transport::~transport() = default;

asio::ip::tcp::socket& transport::socket() {
  return plain_;
}

asio::any_io_executor transport::get_executor() {
  return socket().get_executor();
}

asio::awaitable<std::tuple<error_code, std::size_t>> transport::read_some(
    asio::mutable_buffer buffer) {
#if CULVERT_WITH_TLS
  if (tls_) co_return co_await read_tls(buffer);
#endif
  co_return co_await plain_.async_read_some(buffer, use_tuple);
}

asio::awaitable<std::tuple<error_code, std::size_t>> transport::read_exactly(
    asio::mutable_buffer buffer) {
#if CULVERT_WITH_TLS
  if (tls_) {
    std::size_t total = 0;
    while (total < buffer.size()) {
      auto [ec, n] = co_await read_tls(buffer + total);
      total += n;
      if (ec) co_return std::tuple{ec, total};
    }
    co_return std::tuple{error_code{}, total};
  }
#endif
  co_return co_await asio::async_read(plain_, buffer, use_tuple);
}

asio::awaitable<std::tuple<error_code, std::size_t>> transport::write(
    std::span<const asio::const_buffer> buffers) {
#if CULVERT_WITH_TLS
  if (tls_) co_return co_await write_tls(buffers);
#endif
  co_return co_await asio::async_write(plain_, buffers, use_tuple);
}

asio::awaitable<std::tuple<error_code, std::size_t>> transport::write(asio::const_buffer one) {
  co_return co_await write(std::span<const asio::const_buffer>(&one, 1));
}

#if !CULVERT_WITH_TLS
void transport::release_idle_buffers() {}
#endif

void transport::try_send_now(std::span<const std::uint8_t> bytes) {
  if (is_tls())
    return;  // a TLS record cannot be written without possibly waiting; the close says it
  [[maybe_unused]] auto sent =
      ::send(plain_.native_handle(), bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
}

void transport::shutdown_send() {
  error_code ignored;
  socket().shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
}

void transport::close() {
  error_code ignored;
  socket().close(ignored);
}

#if !CULVERT_WITH_TLS
std::string describe_tls_error(const error_code& ec) {
  return ec.message();
}

bool peer_closed(const error_code& ec) {
  return ec == asio::error::eof;
}
#endif

}  // namespace culvert::shared::net
