// Transport, TLS half: handshakes, record gathering for writes, and readable TLS errors.
// Only in culvert_shared (CULVERT_WITH_TLS=1).
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cstring>

#include "shared/net/transport.hpp"

static_assert(CULVERT_WITH_TLS, "transport_tls.cpp belongs to the TLS build only");

namespace culvert::shared::net {

namespace asio = boost::asio;
using boost::system::error_code;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
// Sixteen TLS records' worth: big enough that bulk data leaves in few writes.
constexpr std::size_t staging_size = 256 * 1024;

transport::transport(asio::ip::tcp::socket socket, asio::ssl::context& context)
    : plain_(socket.get_executor()),
      tls_(std::make_unique<tls_stream>(std::move(socket), context)) {}

asio::awaitable<error_code> transport::handshake(asio::ssl::stream_base::handshake_type type) {
  if (!tls_) co_return error_code{};
  auto [ec] = co_await tls_->async_handshake(type, use_tuple);
  co_return ec;
}

asio::awaitable<error_code> transport::handshake(asio::ssl::stream_base::handshake_type type,
                                                 std::chrono::steady_clock::duration limit) {
  using namespace asio::experimental::awaitable_operators;
  if (!tls_) co_return error_code{};
  asio::steady_timer timer(get_executor(), limit);
  auto outcome = co_await (tls_->async_handshake(type, use_tuple) || timer.async_wait(use_tuple));
  if (outcome.index() == 1) co_return asio::error::make_error_code(asio::error::timed_out);
  co_return std::get<0>(std::get<0>(outcome));
}

std::string transport::certificate_problem() const {
  if (!tls_) return "";
  const long result = SSL_get_verify_result(const_cast<tls_stream&>(*tls_).native_handle());
  return result == X509_V_OK ? "" : X509_verify_cert_error_string(result);
}

asio::awaitable<std::tuple<error_code, std::size_t>> transport::write_tls(
    std::span<const asio::const_buffer> buffers) {
  // Asio's TLS stream encrypts one buffer per write: gather first, or every 10-byte header
  // would cost a record and a system call of its own.
  if (!staging_) staging_ = std::make_unique<std::uint8_t[]>(staging_size);
  std::size_t total = 0, filled = 0;
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    auto piece = buffers[i];
    while (piece.size() > 0) {
      const std::size_t n = std::min(piece.size(), staging_size - filled);
      std::memcpy(staging_.get() + filled, piece.data(), n);
      filled += n;
      piece += n;
      if (filled == staging_size || (piece.size() == 0 && i + 1 == buffers.size())) {
        auto [ec, written] =
            co_await asio::async_write(*tls_, asio::buffer(staging_.get(), filled), use_tuple);
        total += written;
        if (ec) co_return std::tuple{ec, total};
        filled = 0;
      }
    }
  }
  if (filled > 0) {  // the last buffer was empty
    auto [ec, written] =
        co_await asio::async_write(*tls_, asio::buffer(staging_.get(), filled), use_tuple);
    total += written;
    if (ec) co_return std::tuple{ec, total};
  }
  co_return std::tuple{error_code{}, total};
}

std::string transport::describe_tls() const {
  if (!tls_) return "clear text";
  SSL* ssl = const_cast<tls_stream&>(*tls_).native_handle();
  std::string text = std::string(SSL_get_version(ssl)) + " " + SSL_get_cipher_name(ssl);
  if (X509* peer = SSL_get0_peer_certificate(ssl)) {
    char subject[256];
    X509_NAME_oneline(X509_get_subject_name(peer), subject, sizeof(subject));
    text += std::string(", peer ") + subject;
  }
  return text;
}

std::string describe_tls_error(const error_code& ec) {
  if (ec.category() == asio::error::get_ssl_category()) {
    const char* reason = ERR_reason_error_string(static_cast<unsigned long>(ec.value()));
    std::string text = reason ? reason : ec.message();
    return text;
  }
  if (ec == asio::ssl::error::stream_truncated) return "the peer closed the TLS connection";
  return ec.message();
}

bool peer_closed(const error_code& ec) {
  return ec == asio::error::eof || ec == asio::ssl::error::stream_truncated;
}

}  // namespace culvert::shared::net
