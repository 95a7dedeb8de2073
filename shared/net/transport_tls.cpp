// Transport, TLS half: OpenSSL over memory BIOs. The socket is read and written here, in large
// pieces; OpenSSL only ever sees memory. Handshakes, record gathering for writes, and readable TLS
// errors. Only in culvert_shared (CULVERT_WITH_TLS=1).
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <climits>
#include <cstring>
#include <stdexcept>

#include "shared/net/transport.hpp"

static_assert(CULVERT_WITH_TLS, "transport_tls.cpp belongs to the TLS build only");

namespace culvert::shared::net {

namespace asio = boost::asio;
using boost::system::error_code;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
// Sixteen TLS records' worth: bulk data leaves in one system call per 256 KiB.
constexpr std::size_t staging_size = 256 * 1024;
// A caller reading into less than this (a control link's header) has the socket read into a
// buffer of this size instead, so that a record never takes several system calls.
constexpr std::size_t small_read_size = 16 * 1024;

namespace {

// The error OpenSSL queued for a failed call, in Asio's category (what describe_tls_error reads).
error_code ssl_failure(SSL* ssl, int result) {
  const int kind = SSL_get_error(ssl, result);
  if (kind == SSL_ERROR_ZERO_RETURN) return asio::error::eof;  // close_notify
  const unsigned long queued = ERR_get_error();
  ERR_clear_error();
  if (queued != 0) return error_code(int(queued), asio::error::get_ssl_category());
  return asio::error::make_error_code(asio::error::fault);  // OpenSSL failed without a reason
}

BIO* new_memory_bio() {
  BIO* bio = BIO_new(BIO_s_mem());
  if (!bio) throw std::bad_alloc();
  return bio;
}

// A write-only BIO that appends to a std::vector (BIO_set_data). A memory BIO would do, but
// emptying one for reuse clears its whole buffer with memset (2.5% of a TLS relay's time).
BIO_METHOD* append_method() {
  static BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "culvert records");
    if (!m) throw std::bad_alloc();
    BIO_meth_set_write_ex(m, [](BIO* bio, const char* data, std::size_t size, std::size_t* done) {
      auto* out = static_cast<std::vector<std::uint8_t>*>(BIO_get_data(bio));
      const auto* bytes = reinterpret_cast<const std::uint8_t*>(data);  // same type: one memcpy
      out->insert(out->end(), bytes, bytes + size);
      *done = size;
      return 1;
    });
    // OpenSSL flushes its write BIO after each flight; nothing else is asked of a sink.
    BIO_meth_set_ctrl(m, [](BIO*, int command, long, void*) -> long {
      return command == BIO_CTRL_FLUSH ? 1 : 0;
    });
    BIO_meth_set_create(m, [](BIO* bio) {
      BIO_set_init(bio, 1);
      return 1;
    });
    return m;
  }();
  return method;
}

}  // namespace

transport::tls_session::tls_session(SSL_CTX* context) : ssl(SSL_new(context)), incoming(nullptr) {
  if (!ssl) throw std::runtime_error("SSL_new failed");
  // Idle connections hand OpenSSL's record buffers back (a tunnel host holds many of them).
  SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
  incoming = new_memory_bio();
  BIO* records = BIO_new(append_method());
  if (!records) {
    BIO_free(incoming);
    SSL_free(ssl);
    throw std::bad_alloc();
  }
  BIO_set_data(records, &outgoing);
  SSL_set_bio(ssl, incoming, records);  // owned by ssl from here
}

transport::tls_session::~tls_session() {
  SSL_free(ssl);
}

transport::transport(asio::ip::tcp::socket socket, asio::ssl::context& context)
    : plain_(std::move(socket)), tls_(std::make_unique<tls_session>(context.native_handle())) {}

asio::awaitable<error_code> transport::handshake(asio::ssl::stream_base::handshake_type type) {
  if (!tls_) co_return error_code{};
  if (type == asio::ssl::stream_base::client)
    SSL_set_connect_state(tls_->ssl);
  else
    SSL_set_accept_state(tls_->ssl);
  co_return co_await run_handshake();
}

asio::awaitable<error_code> transport::handshake(asio::ssl::stream_base::handshake_type type,
                                                 std::chrono::steady_clock::duration limit) {
  using namespace asio::experimental::awaitable_operators;
  if (!tls_) co_return error_code{};
  asio::steady_timer timer(get_executor(), limit);
  auto outcome = co_await (handshake(type) || timer.async_wait(use_tuple));
  if (outcome.index() == 1) co_return asio::error::make_error_code(asio::error::timed_out);
  co_return std::get<0>(outcome);
}

asio::awaitable<error_code> transport::run_handshake() {
  for (;;) {
    ERR_clear_error();
    const int result = SSL_do_handshake(tls_->ssl);
    // Read OpenSSL's verdict now: while we send, other connections of this thread use its queue.
    const bool done = result == 1;
    const bool wants_input = !done && SSL_get_error(tls_->ssl, result) == SSL_ERROR_WANT_READ;
    const error_code failure = done || wants_input ? error_code{} : ssl_failure(tls_->ssl, result);
    // Every flight, and the alert of a failure, goes out before we wait for the peer or give up.
    const error_code sent = co_await send_outgoing();
    if (failure) co_return failure;
    if (sent || done) co_return sent;
    if (!tls_->small_reads) tls_->small_reads = std::make_unique<std::uint8_t[]>(small_read_size);
    std::uint8_t* space = tls_->small_reads.get();
    auto [ec, n] = co_await plain_.async_read_some(asio::buffer(space, small_read_size), use_tuple);
    if (ec == asio::error::eof) co_return asio::ssl::error::stream_truncated;
    if (ec) co_return ec;
    BIO_write(tls_->incoming, space, int(n));
  }
}

asio::awaitable<std::tuple<error_code, std::size_t>> transport::read_tls(
    asio::mutable_buffer buffer) {
  if (tls_->failed) co_return std::tuple{tls_->failed, std::size_t{0}};
  if (buffer.size() == 0) co_return std::tuple{error_code{}, std::size_t{0}};
  auto* out = static_cast<std::uint8_t*>(buffer.data());
  const int want = int(std::min<std::size_t>(buffer.size(), INT_MAX));
  for (;;) {
    ERR_clear_error();
    int result = SSL_read(tls_->ssl, out, want);
    if (result > 0) {
      // SSL_read returns one record at most: take whatever else is decryptable already.
      int got = result;
      while (got < want) {
        result = SSL_read(tls_->ssl, out + got, want - got);
        if (result > 0) {
          got += result;
          continue;
        }
        // A failure after some bytes: those go to the caller, the failure with the next call.
        if (SSL_get_error(tls_->ssl, result) != SSL_ERROR_WANT_READ)
          tls_->failed = ssl_failure(tls_->ssl, result);
        break;
      }
      ERR_clear_error();
      co_return std::tuple{error_code{}, std::size_t(got)};
    }
    if (SSL_get_error(tls_->ssl, result) != SSL_ERROR_WANT_READ)
      co_return std::tuple{ssl_failure(tls_->ssl, result), std::size_t{0}};
    // Read ciphertext into the caller's own buffer when it is large (it is free until
    // decrypted into), else into small_reads; either way many records per system call.
    std::uint8_t* space = out;
    std::size_t room = buffer.size();
    if (room < small_read_size) {
      if (!tls_->small_reads) tls_->small_reads = std::make_unique<std::uint8_t[]>(small_read_size);
      space = tls_->small_reads.get();
      room = small_read_size;
    }
    auto [ec, n] = co_await plain_.async_read_some(asio::buffer(space, room), use_tuple);
    if (ec == asio::error::eof) ec = asio::ssl::error::stream_truncated;  // no close_notify
    if (ec) co_return std::tuple{ec, std::size_t{0}};
    BIO_write(tls_->incoming, space, int(n));
  }
}

asio::awaitable<std::tuple<error_code, std::size_t>> transport::write_tls(
    std::span<const asio::const_buffer> buffers) {
  // Gather first: OpenSSL makes a record of every SSL_write, and a 10-byte frame header must
  // not become a record of its own.
  if (!tls_->staging) tls_->staging = std::make_unique<std::uint8_t[]>(staging_size);
  tls_->writing = true;
  std::uint8_t* staging = tls_->staging.get();
  std::size_t total = 0, filled = 0;
  error_code failed;
  for (std::size_t i = 0; i < buffers.size() && !failed; ++i) {
    auto piece = buffers[i];
    while (piece.size() > 0) {
      const std::size_t n = std::min(piece.size(), staging_size - filled);
      std::memcpy(staging + filled, piece.data(), n);
      filled += n;
      piece += n;
      if (filled == staging_size) {
        if ((failed = co_await encrypt_and_send(staging, filled))) break;
        total += filled;
        filled = 0;
      }
    }
  }
  if (!failed && filled > 0) {
    if (!(failed = co_await encrypt_and_send(staging, filled))) total += filled;
  }
  tls_->writing = false;
  co_return std::tuple{failed, total};
}

asio::awaitable<error_code> transport::encrypt_and_send(const std::uint8_t* data,
                                                        std::size_t size) {
  ERR_clear_error();
  // Into a memory BIO a write never waits and is never partial.
  const int result = SSL_write(tls_->ssl, data, int(size));
  if (result <= 0) co_return ssl_failure(tls_->ssl, result);
  co_return co_await send_outgoing();
}

asio::awaitable<error_code> transport::send_outgoing() {
  tls_session& tls = *tls_;
  if (tls.outgoing.empty()) co_return error_code{};
  std::swap(tls.outgoing, tls.sending);  // `sending` was empty: new records start a fresh list
  auto [ec, written] = co_await asio::async_write(plain_, asio::buffer(tls.sending), use_tuple);
  tls.sending.clear();  // keeps its capacity for the next swap
  co_return ec;
}

void transport::release_idle_buffers() {
  if (!tls_) return;
  if (!tls_->writing) {
    tls_->staging.reset();
    if (tls_->outgoing.empty()) std::vector<std::uint8_t>().swap(tls_->outgoing);
    std::vector<std::uint8_t>().swap(tls_->sending);
  }
  if (BIO_ctrl_pending(tls_->incoming) == 0) {  // a fresh BIO: an emptied one keeps its memory
    tls_->incoming = new_memory_bio();
    SSL_set0_rbio(tls_->ssl, tls_->incoming);
  }
}

std::string transport::certificate_problem() const {
  if (!tls_) return "";
  const long result = SSL_get_verify_result(tls_->ssl);
  return result == X509_V_OK ? "" : X509_verify_cert_error_string(result);
}

std::string transport::describe_tls() const {
  if (!tls_) return "clear text";
  SSL* ssl = tls_->ssl;
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
