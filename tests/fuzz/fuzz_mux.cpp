// Fuzz target: the multiplexer's state machine (mux_session) fed by a hostile peer over a real
// loopback TCP connection. Input: one option byte (role, small windows, few streams, linger,
// visitor traffic, refused dials), then the raw bytes the peer sends. Checks that the session
// always ends once the peer half-closes, and that no socket outlives an iteration (fd leak).
#include <dirent.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <list>
#include <memory>
#include <optional>
#include <vector>

#include "shared/net/buffer_pool.hpp"
#include "shared/net/mux_session.hpp"
#include "tests/support/loopback_pair.hpp"

namespace asio = boost::asio;
namespace net = culvert::shared::net;
using asio::ip::tcp;

namespace {

using culvert::tests::loopback_pair;

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// Option byte.
constexpr std::uint8_t opt_client = 0x01;        // session role client (else server, stream 1 open)
constexpr std::uint8_t opt_small_window = 0x02;  // 1 KiB initial window: credit paths
constexpr std::uint8_t opt_few_streams = 0x04;   // max_streams = 2
constexpr std::uint8_t opt_linger = 0x08;        // peer waits before its FIN: relays get to run
constexpr std::uint8_t opt_visitor = 0x10;       // the visitor / local service send bytes too
constexpr std::uint8_t opt_refuse = 0x20;        // client role: dial fails (stream reset)

// Reads and discards until EOF or error; optionally sends `greeting` and half-closes first.
asio::awaitable<void> drain(tcp::socket& s, bool greet, bool* done = nullptr) {
  if (greet) {
    static const char greeting[] = "GET / HTTP/1.1\r\nHost: fuzz\r\n\r\n";
    co_await asio::async_write(s, asio::buffer(greeting, sizeof greeting - 1), use_tuple);
  }
  std::array<std::uint8_t, 16384> buf;
  for (;;) {
    auto [ec, n] = co_await s.async_read_some(asio::buffer(buf), use_tuple);
    if (ec) break;
  }
  if (done) *done = true;
}

std::size_t open_fds() {
  std::size_t n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d)) ++n;
    closedir(d);
  }
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  signal(SIGPIPE, SIG_IGN);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return -1;
  const std::uint8_t opts = data[0];
  const std::vector<std::uint8_t> bytes(data + 1, data + size);
  const bool client = opts & opt_client;

  static std::size_t baseline_fds = 0;
  static std::uint64_t iterations = 0;

  {
    net::buffer_pool pool;  // outlives the io_context: sessions return chunks while dying
    net::window_budget windows;
    asio::io_context io;
    auto pair = loopback_pair(io);  // no structured binding: clang 14 cannot capture one
    tcp::socket& ours = pair.first;
    tcp::socket& theirs = pair.second;
    tcp::acceptor local(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    std::list<tcp::socket> served;  // local service connections (client role)

    bool closed = false, peer_done = false;
    net::mux_settings settings;
    if (opts & opt_small_window) settings.initial_window = 1024, settings.max_window = 4096;
    if (opts & opt_few_streams) settings.max_streams = 2;
    net::mux_hooks hooks;
    hooks.on_closed = [&](const std::string&) { closed = true; };
    hooks.on_stream_closed = [](const net::stream_report&) {};
    hooks.on_traffic = [](std::uint64_t, std::uint64_t, bool) {};
    hooks.dial = [&, refuse =
                         bool(opts & opt_refuse)]() -> asio::awaitable<std::optional<tcp::socket>> {
      if (refuse) co_return std::nullopt;
      tcp::socket s(io);
      auto [ec] = co_await s.async_connect(local.local_endpoint(), use_tuple);
      if (ec) co_return std::nullopt;
      co_return std::move(s);
    };
    auto session = std::make_shared<net::mux_session>(
        net::transport(std::move(ours)),
        client ? net::mux_session::role::client : net::mux_session::role::server, settings,
        std::move(hooks), pool, windows);
    session->start();

    std::optional<tcp::socket> visitor;
    if (!client) {
      auto [out, in] = loopback_pair(io);
      if (!session->open_stream(std::move(in), "127.0.0.1:4242")) std::abort();
      visitor.emplace(std::move(out));
      asio::co_spawn(io, drain(*visitor, opts & opt_visitor), asio::detached);
    } else {
      asio::co_spawn(
          io,
          [&]() -> asio::awaitable<void> {
            for (;;) {
              auto [ec, s] = co_await local.async_accept(use_tuple);
              if (ec) co_return;
              auto& kept = served.emplace_back(std::move(s));
              asio::co_spawn(io, drain(kept, opts & opt_visitor), asio::detached);
            }
          },
          asio::detached);
    }

    // The hostile peer: sends the input, maybe lingers, half-closes, reads until the session
    // closes the connection.
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          co_await asio::async_write(theirs, asio::buffer(bytes), use_tuple);
          if (opts & opt_linger) {
            asio::steady_timer t(io, std::chrono::milliseconds(3));
            co_await t.async_wait(use_tuple);
          }
          boost::system::error_code ec;
          theirs.shutdown(tcp::socket::shutdown_send, ec);
          co_await drain(theirs, false, &peer_done);
        },
        asio::detached);

    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!(closed && peer_done) && std::chrono::steady_clock::now() < deadline)
      io.run_one_for(std::chrono::milliseconds(50));
    if (!closed) {
      std::fprintf(stderr, "fuzz_mux: session still open 5 s after the peer's FIN\n");
      std::abort();
    }
    if (session->is_open() || session->stream_count() != 0) {
      std::fprintf(stderr, "fuzz_mux: closed session still open or holding streams\n");
      std::abort();
    }
    io.stop();
  }

  // Every socket of the iteration is gone now; a steady climb means the session leaks them.
  if (++iterations == 64) baseline_fds = open_fds();
  if (iterations > 64 && iterations % 512 == 0 && open_fds() > baseline_fds + 32) {
    std::fprintf(stderr, "fuzz_mux: fd leak: %zu open, %zu after warm-up\n", open_fds(),
                 baseline_fds);
    std::abort();
  }
  return 0;
}
