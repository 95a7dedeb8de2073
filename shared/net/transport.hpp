// The one seam between culvert's protocol code and the network: a connected TCP socket, either in
// clear or wrapped in TLS 1.3 (OpenSSL over memory BIOs, driven by Asio coroutines). Control
// links, handshakes and the multiplexer read and write through it and never learn which it is.
// Used by every process.
// Invariant: a TLS transport never reveals its raw socket for reading or writing (only for
// socket options, addresses and closing), so no byte can bypass the record layer.
// Built twice: with CULVERT_WITH_TLS=0 (culvert_shared_clear, for the clear-text worker) the TLS
// half is left out and OpenSSL is never mapped, which saves an idle worker about 0.7 MiB.
#pragma once

// No default: a file compiled without it would see another class layout than its library.
#ifndef CULVERT_WITH_TLS
#error "CULVERT_WITH_TLS must be 0 or 1 (culvert_shared or culvert_shared_clear sets it)"
#endif

#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#if CULVERT_WITH_TLS
#include <openssl/ssl.h>

#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream_base.hpp>
#endif
#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <vector>

namespace culvert::shared::net {

class transport {
 public:
  transport() = delete;
  explicit transport(boost::asio::ip::tcp::socket plain);
  transport(transport&&) noexcept;
  transport& operator=(transport&&) noexcept;
  ~transport();

#if CULVERT_WITH_TLS
  // Wraps the socket in TLS; call handshake() before reading or writing.
  transport(boost::asio::ip::tcp::socket, boost::asio::ssl::context&);

  bool is_tls() const {
    return tls_ != nullptr;
  }
  // The TLS handshake (no-op in clear). Returns the error, with OpenSSL's reason where it has one.
  boost::asio::awaitable<boost::system::error_code> handshake(
      boost::asio::ssl::stream_base::handshake_type);
  // The same, given up after `limit` (boost::asio::error::timed_out).
  boost::asio::awaitable<boost::system::error_code> handshake(
      boost::asio::ssl::stream_base::handshake_type, std::chrono::steady_clock::duration limit);
  SSL* native_tls() {
    return tls_ ? tls_->ssl : nullptr;
  }
  // After a failed client handshake: why the peer's certificate was refused ("" if it was not).
  std::string certificate_problem() const;
  // TLS: the verified peer's certificate subject, the protocol version and cipher, for logs.
  std::string describe_tls() const;
#else
  bool is_tls() const {
    return false;
  }
#endif
  boost::asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> read_some(
      boost::asio::mutable_buffer);
  // Reads exactly the buffer's size (or fails).
  boost::asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> read_exactly(
      boost::asio::mutable_buffer);
  // Writes every buffer, in order. In clear one writev; in TLS the pieces are first gathered
  // into full records, so small frame headers never become records of their own.
  boost::asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> write(
      std::span<const boost::asio::const_buffer>);
  // (A coroutine too, so that `one` lives in its frame while the write runs.)
  boost::asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> write(
      boost::asio::const_buffer one);
  // Hands back buffers an idle connection does not need (TLS: the plaintext gathered and the
  // records encrypted for earlier writes). Safe while a read or a write waits.
  void release_idle_buffers();
  // Best-effort, never-blocking write of a last message (an ERROR before closing). In TLS it is
  // skipped when it cannot go out at once.
  void try_send_now(std::span<const std::uint8_t>);
  // Ends our sending direction: TCP FIN in clear; in TLS, the socket's FIN too (close_notify is
  // not awaited, so a peer that never reads cannot hold us).
  void shutdown_send();
  void close();

  boost::asio::ip::tcp::socket& socket();  // options, addresses, native handle; never for I/O
  boost::asio::any_io_executor get_executor();

 private:
  boost::asio::ip::tcp::socket plain_;
#if CULVERT_WITH_TLS
  // OpenSSL reads and writes memory, not the socket, so that many records move in one system
  // call each way (Asio's TLS stream moves one 16 KiB record per call).
  struct tls_session {
    explicit tls_session(SSL_CTX*);
    ~tls_session();
    SSL* ssl;
    BIO* incoming;  // ciphertext read from the socket, not yet decrypted (a memory BIO)
    // Records OpenSSL wrote (its write BIO appends here), and the ones on the wire: swapped, so
    // that records made during a send (a reader answering a key update) never move its bytes.
    std::vector<std::uint8_t> outgoing, sending;
    std::unique_ptr<std::uint8_t[]> staging;      // plaintext gathered into full records
    std::unique_ptr<std::uint8_t[]> small_reads;  // socket reads for callers with small buffers
    bool writing = false;  // write_tls is between its first gathered byte and its last send
    boost::system::error_code failed;  // met by a read that returned bytes: the next one's
  };
  boost::asio::awaitable<boost::system::error_code> run_handshake();
  boost::asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> read_tls(
      boost::asio::mutable_buffer);
  boost::asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> write_tls(
      std::span<const boost::asio::const_buffer>);
  boost::asio::awaitable<boost::system::error_code> encrypt_and_send(const std::uint8_t*,
                                                                     std::size_t);
  boost::asio::awaitable<boost::system::error_code> send_outgoing();
  std::unique_ptr<tls_session> tls_;
#endif
};

// A readable explanation of a read or write failure, with OpenSSL's reason for a TLS one
// ("certificate verify failed: self-signed certificate").
std::string describe_tls_error(const boost::system::error_code&);
// The peer ended the connection: a FIN in clear, or a TLS stream cut without close_notify.
bool peer_closed(const boost::system::error_code&);

}  // namespace culvert::shared::net
