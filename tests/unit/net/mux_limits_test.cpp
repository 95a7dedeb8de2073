// The multiplexer's limits on what visitors can make a process hold: local dials cancelled by
// RESET and capped, streams reset when idle, and the relay buffer budget (new streams refused
// once it is full). Real loopback sockets; a raw peer where frames are scripted.
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <catch2/catch.hpp>
#include <list>
#include <set>

#include "shared/net/mux_session.hpp"
#include "shared/protocol/frame.hpp"
#include "tests/support/loopback_pair.hpp"
#include "tests/support/rethrow_on_error.hpp"
#include "tests/support/run_coroutine.hpp"

namespace asio = boost::asio;
namespace net = culvert::shared::net;
namespace proto = culvert::shared::protocol;
using asio::ip::tcp;
using namespace std::chrono_literals;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

namespace {

using culvert::tests::loopback_pair;
using culvert::tests::rethrow_on_error;
using culvert::tests::run_coroutine;

std::vector<std::uint8_t> frame_bytes(proto::frame_type type, std::uint32_t stream,
                                      std::vector<std::uint8_t> payload) {
  auto head = proto::encode_header({std::uint32_t(payload.size()), type, 0, stream});
  std::vector<std::uint8_t> out(head.begin(), head.end());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

std::vector<std::uint8_t> open_frame(std::uint32_t id) {
  const std::string peer = "192.0.2.1:4000";
  std::vector<std::uint8_t> payload{std::uint8_t(peer.size())};
  payload.insert(payload.end(), peer.begin(), peer.end());
  return frame_bytes(proto::frame_type::open, id, payload);
}

std::vector<std::uint8_t> reset_frame(std::uint32_t id) {
  std::vector<std::uint8_t> code(4);
  proto::store_u32(code.data(), 1);
  return frame_bytes(proto::frame_type::reset, id, code);
}

// Polls `done` every millisecond until it holds or `limit` passes; returns whether it held.
asio::awaitable<bool> eventually(std::function<bool()> done, std::chrono::milliseconds limit) {
  asio::steady_timer tick(co_await asio::this_coro::executor);
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) co_return false;
    tick.expires_after(1ms);
    co_await tick.async_wait(use_tuple);
  }
  co_return true;
}

// A dial that never connects by itself (a local host that drops SYNs): it ends only when
// cancelled, and counts how often that happened.
struct hanging_dials {
  int started = 0, cancelled = 0;
  std::function<asio::awaitable<std::optional<tcp::socket>>()> hook(asio::io_context& io) {
    return [this, &io]() -> asio::awaitable<std::optional<tcp::socket>> {
      ++started;
      asio::steady_timer forever(io, 1h);
      auto [ec] = co_await forever.async_wait(use_tuple);
      if (ec == asio::error::operation_aborted) ++cancelled;
      co_return std::nullopt;
    };
  }
};

// A client-role session on one end of a loopback connection; the test scripts the other end.
struct client_under_test {
  asio::io_context& io;
  tcp::socket peer;
  std::shared_ptr<net::mux_session> session;
};

client_under_test start_client(asio::io_context& io, net::buffer_pool& pool,
                               net::window_budget& windows, net::mux_settings settings,
                               net::mux_hooks hooks) {
  auto [ours, theirs] = loopback_pair(io);
  auto session = std::make_shared<net::mux_session>(net::transport(std::move(ours)),
                                                    net::mux_session::role::client, settings,
                                                    std::move(hooks), pool, windows);
  session->start();
  return {io, std::move(theirs), session};
}

// The stream ids the session answered with RESET, read from the raw peer's end until `until`.
asio::awaitable<void> collect_resets(tcp::socket& s, std::set<std::uint32_t>& resets) {
  for (;;) {
    std::array<std::uint8_t, proto::header_size> head;
    auto [ec, n] = co_await asio::async_read(s, asio::buffer(head), use_tuple);
    if (ec) co_return;
    auto decoded = proto::decode_header(head);
    if (!std::holds_alternative<proto::frame_header>(decoded)) co_return;
    auto h = std::get<proto::frame_header>(decoded);
    std::vector<std::uint8_t> payload(h.length);
    auto [ec2, n2] = co_await asio::async_read(s, asio::buffer(payload), use_tuple);
    if (ec2) co_return;
    if (h.type == proto::frame_type::reset) resets.insert(h.stream_id);
  }
}

}  // namespace

TEST_CASE("a RESET during the local dial cancels the dial", "[mux][limits]") {
  // Before io: a session that a failed test leaves in a coroutine frame dies with io and gives
  // its buffers back to the pool then (as in every test here).
  net::buffer_pool pool;
  net::window_budget windows;
  asio::io_context io;
  hanging_dials dials;
  net::mux_hooks hooks;
  hooks.dial = dials.hook(io);
  auto c = start_client(io, pool, windows, {}, std::move(hooks));
  bool dialling = false, cancelled = false;
  run_coroutine(
      io,
      [&]() -> asio::awaitable<void> {
        auto open = open_frame(1);
        co_await asio::async_write(c.peer, asio::buffer(open), use_tuple);
        dialling = co_await eventually([&] { return c.session->dials_in_flight() == 1; }, 2000ms);
        auto reset = reset_frame(1);
        co_await asio::async_write(c.peer, asio::buffer(reset), use_tuple);
        cancelled = co_await eventually(
            [&] { return dials.cancelled == 1 && c.session->dials_in_flight() == 0; }, 2000ms);
        c.session->close("test over");
      }(),
      10s);
  CHECK(dialling);
  CHECK(cancelled);
  CHECK(dials.started == 1);
  CHECK(dials.cancelled == 1);
}

TEST_CASE("OPENs beyond the dials in flight wait their turn; a reset one is never dialled",
          "[mux][limits]") {
  net::buffer_pool pool;
  net::window_budget windows;
  asio::io_context io;
  hanging_dials dials;
  net::mux_hooks hooks;
  hooks.dial = dials.hook(io);
  net::mux_settings settings;
  settings.max_dials = 3;
  auto c = start_client(io, pool, windows, settings, std::move(hooks));
  std::set<std::uint32_t> resets;
  bool capped = false, next_dialled = false, skipped = false;
  asio::co_spawn(io, collect_resets(c.peer, resets), rethrow_on_error);
  run_coroutine(
      io,
      [&]() -> asio::awaitable<void> {
        for (std::uint32_t id = 1; id <= 9; id += 2) {
          auto open = open_frame(id);
          co_await asio::async_write(c.peer, asio::buffer(open), use_tuple);
        }
        // Three dial; streams 7 and 9 wait, and nobody gets a RESET for it.
        capped = co_await eventually([&] { return dials.started == 3; }, 2000ms);
        co_await eventually([&] { return dials.started > 3; }, 300ms);
        capped =
            capped && dials.started == 3 && resets.empty() && c.session->dials_in_flight() == 3;
        // The visitor of waiting stream 7 goes away, then dial 1's visitor too: its slot goes to
        // stream 9, and 7 is never dialled.
        auto reset7 = reset_frame(7);
        co_await asio::async_write(c.peer, asio::buffer(reset7), use_tuple);
        auto reset1 = reset_frame(1);
        co_await asio::async_write(c.peer, asio::buffer(reset1), use_tuple);
        next_dialled = co_await eventually([&] { return dials.started == 4; }, 2000ms);
        co_await eventually([&] { return dials.started > 4; }, 300ms);
        skipped = dials.started == 4 && c.session->dials_in_flight() == 3;
        c.session->close("test over");
      }(),
      10s);
  CHECK(capped);
  CHECK(next_dialled);
  CHECK(skipped);
}

TEST_CASE("a stream with no byte either way for stream_idle_timeout is reset", "[mux][limits]") {
  net::buffer_pool pool;
  net::window_budget windows;
  asio::io_context io;
  tcp::acceptor local(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  // An echo service.
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        for (;;) {
          auto [ec, s] = co_await local.async_accept(use_tuple);
          if (ec) co_return;
          asio::co_spawn(
              io,
              [s = std::move(s)]() mutable -> asio::awaitable<void> {
                std::array<std::uint8_t, 1024> buf;
                for (;;) {
                  auto [rec, n] = co_await s.async_read_some(asio::buffer(buf), use_tuple);
                  if (rec) co_return;
                  co_await asio::async_write(s, asio::buffer(buf.data(), n), use_tuple);
                }
              },
              rethrow_on_error);
        }
      },
      rethrow_on_error);
  net::mux_settings settings;
  settings.stream_idle_timeout = 200ms;
  net::mux_hooks client_hooks;
  client_hooks.dial = [&]() -> asio::awaitable<std::optional<tcp::socket>> {
    tcp::socket s(io);
    auto [ec] = co_await s.async_connect(local.local_endpoint(), use_tuple);
    if (ec) co_return std::nullopt;
    co_return std::move(s);
  };
  auto [worker_end, client_end] = loopback_pair(io);
  auto server = std::make_shared<net::mux_session>(net::transport(std::move(worker_end)),
                                                   net::mux_session::role::server, settings,
                                                   net::mux_hooks{}, pool, windows);
  auto client = std::make_shared<net::mux_session>(net::transport(std::move(client_end)),
                                                   net::mux_session::role::client, settings,
                                                   std::move(client_hooks), pool, windows);
  server->start();
  client->start();
  auto [idle, idle_accepted] = loopback_pair(io);
  auto [busy, busy_accepted] = loopback_pair(io);
  REQUIRE(server->open_stream(std::move(idle_accepted), "192.0.2.1:1"));
  REQUIRE(server->open_stream(std::move(busy_accepted), "192.0.2.1:2"));
  boost::system::error_code idle_end;
  std::chrono::milliseconds idle_lived{};
  bool busy_alive = false;
  bool idle_reset_first = false;  // the idle stream ended while the sessions were still open
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        const auto started = std::chrono::steady_clock::now();
        std::array<std::uint8_t, 1> byte{'x'};
        co_await asio::async_write(idle, asio::buffer(byte), use_tuple);
        co_await asio::async_read(idle, asio::buffer(byte), use_tuple);
        auto [ec, n] = co_await idle.async_read_some(asio::buffer(byte), use_tuple);
        idle_end = ec;
        idle_lived = std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::steady_clock::now() - started);
      },
      rethrow_on_error);
  run_coroutine(
      io,
      [&]() -> asio::awaitable<void> {
        // A byte each 50 ms for 600 ms: three idle timeouts long, never idle for one.
        asio::steady_timer pace(io);
        std::array<std::uint8_t, 1> byte{'y'};
        for (int i = 0; i < 12; ++i) {
          auto [wec, wn] = co_await asio::async_write(busy, asio::buffer(byte), use_tuple);
          auto [rec, rn] = co_await asio::async_read(busy, asio::buffer(byte), use_tuple);
          if (wec || rec) co_return;
          pace.expires_after(50ms);
          co_await pace.async_wait(use_tuple);
        }
        busy_alive = true;
        idle_reset_first = idle_lived.count() > 0;
        server->close("test over");
        client->close("test over");
        local.close();  // the echo service's accept loop ends: nothing is left to run
      }(),
      10s);
  CHECK(idle_end == asio::error::connection_reset);
  CHECK(idle_lived >= 200ms);
  CHECK(idle_lived < 1000ms);
  CHECK(busy_alive);
  CHECK(idle_reset_first);
}

namespace {
// Makes the client copy (an observed stream never splices), so its buffers are pool chunks.
struct quiet_observer : net::stream_observer {
  void on_from_peer(std::span<const char>) override {}
  void on_from_socket(std::span<const char>) override {}
  void on_end(bool) override {}
};
}  // namespace

TEST_CASE("past the buffer budget new streams are refused", "[mux][limits]") {
  // Visitors send 1 MiB each to a local service that reads nothing at first: the client buffers
  // each stream's window (256 KiB) in pool chunks. With a 1 MiB budget, four streams fill it and
  // later OPENs are refused: the budget, not visitors x window, bounds the buffers.
  net::buffer_pool server_pool, client_pool;
  net::window_budget server_windows, client_windows;  // one per process, as the pools
  asio::io_context io;
  client_pool.set_budget(1024 * 1024);
  tcp::acceptor local(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  std::list<tcp::socket> accepted;  // a list: coroutines hold pointers to its sockets
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        for (;;) {
          auto [ec, s] = co_await local.async_accept(use_tuple);
          if (ec) co_return;
          // A small receive buffer: the kernel takes little, the relay buffers the rest.
          s.set_option(asio::socket_base::receive_buffer_size(4096));
          accepted.push_back(std::move(s));
        }
      },
      rethrow_on_error);
  net::mux_hooks client_hooks;
  client_hooks.dial = [&]() -> asio::awaitable<std::optional<tcp::socket>> {
    tcp::socket s(io);
    auto [ec] = co_await s.async_connect(local.local_endpoint(), use_tuple);
    if (ec) co_return std::nullopt;
    s.set_option(asio::socket_base::send_buffer_size(4096));  // little room in the kernel
    co_return std::move(s);
  };
  client_hooks.make_observer = [] { return std::make_unique<quiet_observer>(); };
  auto [worker_end, client_end] = loopback_pair(io);
  auto server = std::make_shared<net::mux_session>(
      net::transport(std::move(worker_end)), net::mux_session::role::server, net::mux_settings{},
      net::mux_hooks{}, server_pool, server_windows);
  auto client = std::make_shared<net::mux_session>(
      net::transport(std::move(client_end)), net::mux_session::role::client, net::mux_settings{},
      std::move(client_hooks), client_pool, client_windows);
  server->start();
  client->start();

  constexpr int visitors = 8;
  constexpr std::size_t each = 1024 * 1024;
  std::vector<std::uint8_t> sent(each);
  for (std::size_t i = 0; i < sent.size(); ++i) sent[i] = std::uint8_t(i * 7 + i / 1013);
  std::list<tcp::socket> held;
  std::size_t peak_chunks = 0;
  int refused = 0;
  run_coroutine(
      io,
      [&]() -> asio::awaitable<void> {
        for (int v = 0; v < visitors; ++v) {
          auto [visitor, visitor_accepted] = loopback_pair(io);
          if (!server->open_stream(std::move(visitor_accepted), "192.0.2.1:1")) {
            ++refused;
            continue;
          }
          // Send what the stream takes; a refused stream's visitor is reset.
          asio::co_spawn(
              io,
              [&, s = &held.emplace_back(std::move(visitor))]() -> asio::awaitable<void> {
                co_await asio::async_write(*s, asio::buffer(sent), use_tuple);
              },
              rethrow_on_error);
          // Let this stream fill its window before the next visitor comes.
          const auto before = client_pool.outstanding();
          co_await eventually(
              [&] {
                peak_chunks = std::max(peak_chunks, client_pool.outstanding());
                return client_pool.outstanding() >= before + 4;  // a window, 256 KiB
              },
              500ms);
        }
        co_await eventually(
            [&] {
              peak_chunks = std::max(peak_chunks, client_pool.outstanding());
              return false;
            },
            200ms);
        // Refused streams: their visitors see a reset.
        for (auto& s : held) {
          std::array<std::uint8_t, 1> b;
          s.non_blocking(true);
          boost::system::error_code ec;
          s.read_some(asio::buffer(b), ec);
          if (ec == asio::error::connection_reset || ec == asio::error::eof) ++refused;
        }
        server->close("test over");
        client->close("test over");
        // The sessions reset every visitor, so their writes end; this ends the accept loop.
        local.close();
      }(),
      20s);
  INFO("peak client chunks " << peak_chunks << ", refused " << refused << ", kept "
                             << accepted.size());
  CHECK(refused >= visitors / 2);
  CHECK(accepted.size() >= 4);
  // Four windows of 256 KiB (plus a chunk in the making each): the budget, not visitors x window.
  CHECK(peak_chunks * net::buffer_pool::chunk_size <= 1024 * 1024 + 4 * 2 * 65536);
}
