// The TLS transport over real loopback sockets, with the data connections' PSK contexts (no
// certificate files): many records per system call both ways, small reads, a key update the
// peer must answer, idle buffers released between transfers, a wrong key, and a peer that cuts
// the connection without close_notify.
#include <openssl/ssl.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <catch2/catch.hpp>
#include <vector>

#include "shared/net/transport.hpp"
#include "shared/tls/tls_contexts.hpp"
#include "tests/support/rethrow_on_error.hpp"
#include "tests/support/run_coroutine.hpp"

namespace asio = boost::asio;
namespace net = culvert::shared::net;
namespace tls = culvert::shared::tls;
using asio::ip::tcp;
using boost::system::error_code;

namespace {

using culvert::tests::rethrow_on_error;
using culvert::tests::run_coroutine;

constexpr std::uint64_t tunnel_id = 7;

tls::psk_bytes key_of(std::uint8_t seed) {
  tls::psk_bytes key;
  for (std::size_t i = 0; i < key.size(); ++i) key[i] = std::uint8_t(seed + i * 13);
  return key;
}

std::vector<std::uint8_t> pattern(std::size_t size, std::uint8_t seed) {
  std::vector<std::uint8_t> bytes(size);
  for (std::size_t i = 0; i < size; ++i) bytes[i] = std::uint8_t(seed + i * 7 + i / 5003);
  return bytes;
}

// Both ends of a loopback TCP connection, wrapped in TLS; `client_key` is what the client offers.
struct tls_pair {
  asio::io_context& io;
  tls::psk_server server_side;
  std::unique_ptr<asio::ssl::context> client_context = tls::make_psk_client_context();
  std::optional<net::transport> server, client;
  error_code server_handshake = asio::error::would_block,
             client_handshake = asio::error::would_block;

  tls_pair(asio::io_context& context, const tls::psk_bytes& client_key) : io(context) {
    server_side.set_psk(tunnel_id, key_of(1));
    tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    tcp::socket a(io), b(io);
    a.connect(acceptor.local_endpoint());
    acceptor.accept(b);
    client.emplace(std::move(a), *client_context);
    server.emplace(std::move(b), server_side.context());
    tls::offer_psk(client->native_tls(), tunnel_id, client_key);
    asio::co_spawn(io, shake(*server, asio::ssl::stream_base::server, server_handshake),
                   rethrow_on_error);
    asio::co_spawn(io, shake(*client, asio::ssl::stream_base::client, client_handshake),
                   rethrow_on_error);
    io.run_for(std::chrono::seconds(10));
    io.restart();
  }

  static asio::awaitable<void> shake(net::transport& t, asio::ssl::stream_base::handshake_type type,
                                     error_code& result) {
    result = co_await t.handshake(type, std::chrono::seconds(5));
  }
};

// Writes `bytes` as a 10-byte piece followed by the rest in 64 KiB pieces (a frame header and
// its payload, as the multiplexer hands them over), in one gathered write per 8 pieces.
asio::awaitable<void> send_all(net::transport& t, const std::vector<std::uint8_t>& bytes,
                               error_code& result) {
  std::size_t at = 0;
  while (at < bytes.size()) {
    std::vector<asio::const_buffer> pieces;
    for (int i = 0; i < 8 && at < bytes.size(); ++i) {
      const std::size_t n =
          std::min(at == 0 ? std::size_t(10) : std::size_t(65536), bytes.size() - at);
      pieces.emplace_back(bytes.data() + at, n);
      at += n;
    }
    auto [ec, n] = co_await t.write(pieces);
    if (ec) {
      result = ec;
      co_return;
    }
  }
  result = {};
}

// Reads `size` bytes, alternating a 10-byte read_exactly with a read_some of up to `chunk`.
asio::awaitable<void> receive_all(net::transport& t, std::size_t size, std::size_t chunk,
                                  std::vector<std::uint8_t>& into, error_code& result) {
  std::vector<std::uint8_t> buffer(chunk);
  bool small = true;
  while (into.size() < size) {
    const std::size_t want = std::min(small ? std::size_t(10) : chunk, size - into.size());
    auto [ec, n] = small ? co_await t.read_exactly(asio::buffer(buffer.data(), want))
                         : co_await t.read_some(asio::buffer(buffer.data(), want));
    into.insert(into.end(), buffer.data(), buffer.data() + n);
    if (ec) {
      result = ec;
      co_return;
    }
    small = !small;
  }
  result = {};
}

// Sends `bytes` from `from` to `to` and checks they arrive intact.
void transfer(asio::io_context& io, net::transport& from, net::transport& to,
              const std::vector<std::uint8_t>& bytes, std::size_t read_chunk) {
  error_code sent = asio::error::would_block, received = asio::error::would_block;
  std::vector<std::uint8_t> got;
  asio::co_spawn(io, send_all(from, bytes, sent), rethrow_on_error);
  asio::co_spawn(io, receive_all(to, bytes.size(), read_chunk, got, received), rethrow_on_error);
  io.run_for(std::chrono::seconds(30));
  io.restart();
  CHECK(sent == error_code{});
  CHECK(received == error_code{});
  CHECK(got.size() == bytes.size());
  CHECK(got == bytes);
}

}  // namespace

TEST_CASE("TLS transport carries many records per call, small reads and a key update intact",
          "[transport][tls]") {
  asio::io_context io;
  tls_pair pair(io, key_of(1));
  REQUIRE(pair.server_handshake == error_code{});
  REQUIRE(pair.client_handshake == error_code{});
  CHECK(pair.client->describe_tls().find("TLSv1.3") != std::string::npos);

  // Both ways at once, each larger than any buffer on the path.
  const auto up = pattern(3 * 1024 * 1024 + 123, 1), down = pattern(2 * 1024 * 1024 + 77, 2);
  transfer(io, *pair.client, *pair.server, up, 65536 + 10);
  transfer(io, *pair.server, *pair.client, down, 4096);  // reads below the small-read size

  // The server asks for a key update: the client's reader meets it and must answer with its
  // own, which leaves with its next write (the server would fail to decrypt otherwise).
  REQUIRE(SSL_key_update(pair.server->native_tls(), SSL_KEY_UPDATE_REQUESTED) == 1);
  transfer(io, *pair.server, *pair.client, pattern(300000, 3), 65536);
  transfer(io, *pair.client, *pair.server, pattern(300000, 4), 65536);

  // Idle buffers go back; the next transfers allocate afresh.
  pair.client->release_idle_buffers();
  pair.server->release_idle_buffers();
  transfer(io, *pair.client, *pair.server, pattern(500000, 5), 65536);
  transfer(io, *pair.server, *pair.client, pattern(500000, 6), 65536);

  // Cut without close_notify: the reader sees the peer gone, not a hang or a crash.
  pair.client->close();
  error_code result = asio::error::would_block;
  std::vector<std::uint8_t> got;
  run_coroutine(io, receive_all(*pair.server, 1, 64, got, result), std::chrono::seconds(10));
  CHECK(net::peer_closed(result));
  CHECK(got.empty());
}

TEST_CASE("TLS transport handshake with the wrong key fails with a reason on both sides",
          "[transport][tls]") {
  asio::io_context io;
  tls_pair pair(io, key_of(2));
  CHECK(pair.server_handshake != error_code{});
  CHECK(pair.server_handshake != asio::error::would_block);  // it ended, within the time limit
  CHECK(pair.client_handshake != error_code{});
  CHECK(pair.client_handshake != asio::error::would_block);
  CHECK_FALSE(net::describe_tls_error(pair.server_handshake).empty());
}
