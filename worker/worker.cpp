// Worker process logic: channel from the supervisor, public accept loop, data-connection adoption.
#include "worker/worker.hpp"

#if CULVERT_WITH_TLS
#include <openssl/crypto.h>
#endif
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstdlib>
#include <cstring>

#include "shared/ipc/worker_channel.hpp"
#include "shared/net/address.hpp"
#include "shared/net/cloexec_socket.hpp"
#include "shared/net/socket_options.hpp"
#include "shared/net/spawn.hpp"
#include "shared/protocol/frame_io.hpp"

namespace culvert::worker {

namespace asio = boost::asio;
namespace net = shared::net;
using asio::ip::tcp;
using shared::net::spawn;
namespace wire = shared::ipc::worker_channel;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

namespace {
constexpr unsigned max_logged_channel_skips = 10;           // a flood must not flood the log too
constexpr auto drain_poll = std::chrono::milliseconds(50);  // how often a drain looks again

tcp protocol_of(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0 &&
      address.ss_family == AF_INET6)
    return tcp::v6();
  return tcp::v4();
}
}  // namespace

worker::worker(asio::io_context& io, worker_options options)
    : io_(io),
      options_(std::move(options)),
      channel_(io, shared::ipc::unix_seqpacket(), options_.channel_fd),
      listener_(io, protocol_of(options_.listener_fd), options_.listener_fd),
      table_(options_.table_fd, options_.slot, options_.segment),
      sessions_changed_(io, asio::steady_timer::time_point::max()),
      signals_(io, SIGTERM, SIGINT),
      sources_(options_.max_visitors_per_source) {
  pool_.set_budget(options_.buffer_budget_mb * 1024 * 1024);
  // Its one page is mapped: the descriptor, which could map the rest of the table, goes now.
  ::close(options_.table_fd);
}

const void* worker::table_page() {
  const auto page = std::uintptr_t(::sysconf(_SC_PAGESIZE));
  return reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(&table_.counters()) &
                                       ~(page - 1));
}

void worker::start() {
  // Visitors a previous worker of this tunnel had open died with it.
  table_.counters().open_visitors.store(0, std::memory_order_relaxed);
  spawn(io_, channel_loop(), "supervisor channel");
  spawn(io_, accept_loop(), "public accept loop");
  signals_.async_wait([this](boost::system::error_code ec, int signal) {
    if (ec) return;
    spdlog::info("signal {}: draining open connections (at most {} s)", signal,
                 options_.drain_timeout.count());
    spawn(io_, drain_and_exit(), "drain");
  });
  spawn(io_, tell_supervisor(wire::encode(wire::ready{})), "ready message");
  spdlog::info("serving {} on {}", options_.domain, net::to_string(listener_.local_endpoint()));
}

asio::awaitable<void> worker::channel_loop() {
  unsigned skipped = 0;
  for (;;) {
    auto received = co_await shared::ipc::receive_message(channel_);
    if (auto* ec = std::get_if<boost::system::error_code>(&received)) {
      if (*ec == asio::error::invalid_argument) {
        // A malformed message, consumed whole. Most likely a handed-over data connection whose
        // descriptor the kernel could not install (MSG_CTRUNC: we are out of descriptors, say
        // under a visitor flood); the client dials again. Skip it, as the supervisor does:
        // exiting would hand that flood the tunnel.
        if (++skipped <= max_logged_channel_skips)
          spdlog::warn(
              "malformed message on the supervisor channel skipped (a data connection lost in "
              "transit if descriptors ran out){}",
              skipped == max_logged_channel_skips ? "; further ones are not logged" : "");
        continue;
      }
      // The supervisor is gone (or broke the channel): nobody can manage this tunnel any more.
      if (!stopped_) {
        spdlog::warn("supervisor channel closed ({}); exiting", ec->message());
        stop_now("supervisor gone");
      }
      co_return;
    }
    auto& message = std::get<shared::ipc::channel_message>(received);
    auto decoded = wire::decode_to_worker(message.payload, message.fd >= 0);
    if (!decoded) {
      if (message.fd >= 0) ::close(message.fd);
      spdlog::warn("unexpected message on the supervisor channel; ignored");
      continue;
    }
    if (auto* key = std::get_if<wire::data_key>(&*decoded)) {
#if CULVERT_WITH_TLS
      // The key of this tunnel's TLS data connections, with the id the client names it by.
      static_assert(sizeof(key->key) == sizeof(shared::tls::psk_bytes));
      shared::tls::psk_bytes psk;
      std::memcpy(psk.data(), key->key.data(), psk.size());
      if (!psk_) psk_ = std::make_unique<shared::tls::psk_server>();
      psk_->set_psk(key->tunnel_id, psk);
      OPENSSL_cleanse(psk.data(), psk.size());
      OPENSSL_cleanse(key->key.data(), key->key.size());
      OPENSSL_cleanse(message.payload.data(), message.payload.size());
#else
      (void)key;
      // The supervisor runs TLS: every data connection of this tunnel would be refused here.
      spdlog::critical(
          "this worker is built without TLS and the supervisor uses TLS; run culvert-worker "
          "(the supervisor's default when it has a certificate) instead");
      exit_code_ = wire::exit_fatal;
      stop_now("worker built without TLS");
      co_return;
#endif
      continue;
    }
    const auto& data = std::get<wire::data_connection>(*decoded);
    boost::system::error_code ec;
    tcp::socket connection(io_);
    connection.assign(protocol_of(message.fd), message.fd, ec);
    if (ec) {
      spdlog::error("adopting a data connection: assign: {}", ec.message());
      ::close(message.fd);
      continue;
    }
    spawn(io_, adopt(std::move(connection), data.tls), "data connection adoption");
  }
}

asio::awaitable<void> worker::adopt(tcp::socket socket, bool tls) {
  boost::system::error_code ec;
  const auto peer = socket.remote_endpoint(ec);
  if (ec) co_return;  // died in transit
  if (stopping_) co_return;
#if CULVERT_WITH_TLS
  if (tls && (!psk_ || tls_handshakes_ >= max_tls_handshakes)) {
    spdlog::warn("data connection from {} dropped: {}", net::to_string(peer),
                 psk_ ? "too many TLS handshakes at once" : "no key yet");
    co_return;
  }
  net::transport connection =
      tls ? net::transport(std::move(socket), psk_->context()) : net::transport(std::move(socket));
  if (tls) {
    // Only a client that knows the tunnel's secret completes this handshake (TLS 1.3 PSK).
    ++tls_handshakes_;
    auto failed =
        co_await connection.handshake(asio::ssl::stream_base::server, options_.handshake_timeout);
    --tls_handshakes_;
    if (failed) {
      spdlog::warn("data connection from {}: TLS handshake failed: {}", net::to_string(peer),
                   net::describe_tls_error(failed));
      co_return;
    }
  }
#else
  if (tls) {
    spdlog::warn("data connection from {} dropped: TLS, and this worker is built without it",
                 net::to_string(peer));
    co_return;
  }
  net::transport connection(std::move(socket));
#endif
  // DATA_READY tells the client its data connection now reaches this worker.
  if (auto err = co_await shared::protocol::write_frame(
          connection, shared::protocol::encode_empty(shared::protocol::frame_type::data_ready))) {
    spdlog::warn("data connection from {} lost before it was ready: {}", net::to_string(peer),
                 err.message());
    co_return;
  }
  auto& counters = table_.counters();
  net::mux_hooks hooks;
  hooks.on_traffic = [&counters](std::uint64_t from_visitor, std::uint64_t to_visitor,
                                 bool spliced) {
    if (from_visitor) counters.bytes_in.fetch_add(from_visitor, std::memory_order_relaxed);
    if (to_visitor) counters.bytes_out.fetch_add(to_visitor, std::memory_order_relaxed);
    if (spliced)
      counters.bytes_spliced.fetch_add(from_visitor + to_visitor, std::memory_order_relaxed);
  };
  hooks.on_stream_closed = [this, &counters](const net::stream_report& r) {
    counters.open_visitors.fetch_sub(1, std::memory_order_relaxed);
    visitor_gone(r.peer);
    spdlog::debug("visitor {} done: {} B in, {} B out, {} ms{}", r.peer, r.bytes_from_socket,
                  r.bytes_to_socket,
                  std::chrono::duration_cast<std::chrono::milliseconds>(r.lifetime).count(),
                  r.abnormal ? ", reset: " + r.reason : "");
  };
  const auto peer_text = net::to_string(peer);
  hooks.on_closed = [this, peer_text](const std::string& reason) {
    std::erase_if(sessions_, [](const auto& s) { return !s->is_open(); });
    spdlog::info("data connection from {} closed: {} ({} left)", peer_text, reason,
                 sessions_.size());
    report_data_connections();
    if (sessions_.empty()) pool_.trim();  // idle: give the relay buffers back
  };
  auto session =
      std::make_shared<net::mux_session>(std::move(connection), net::mux_session::role::server,
                                         options_.mux, std::move(hooks), pool_, windows_);
  session->start();
  sessions_.push_back(session);
  spdlog::info("data connection from {} attached ({} now)", peer_text, sessions_.size());
  report_data_connections();
  sessions_changed_.cancel();
}

void worker::report_data_connections() {
  spawn(io_,
        tell_supervisor(wire::encode(wire::data_connection_count{std::uint16_t(sessions_.size())})),
        "data connection report");
}

// A member coroutine rather than a capturing lambda: a lambda's captures die with the closure
// object, before the coroutine that uses them has finished.
asio::awaitable<void> worker::tell_supervisor(std::string message) {
  if (auto ec = co_await shared::ipc::send_message(channel_, message))
    spdlog::warn("telling the supervisor '{}' failed: {}", message.substr(0, 1), ec.message());
}

std::shared_ptr<net::mux_session> worker::least_loaded_session() {
  std::shared_ptr<net::mux_session> best;
  for (auto& s : sessions_)
    if (s->is_open() && (!best || s->stream_count() < best->stream_count())) best = s;
  return best;
}

// Waits until a data connection exists, for at most `limit`; true if one does.
asio::awaitable<bool> worker::wait_for_session(std::chrono::steady_clock::duration limit) {
  using namespace asio::experimental::awaitable_operators;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!least_loaded_session() && !stopping_ && std::chrono::steady_clock::now() < deadline) {
    asio::steady_timer give_up(io_, deadline);
    co_await (sessions_changed_.async_wait(use_tuple) || give_up.async_wait(use_tuple));
  }
  co_return least_loaded_session() != nullptr && !stopping_;
}

// Hands the visitor to the least-loaded data connection as a new stream; false if none would
// take it (a socket already moved into a refusing session is reset by it).
bool worker::relay(tcp::socket& visitor, const std::string& peer) {
  auto session = least_loaded_session();
  if (!session || !session->open_stream(std::move(visitor), peer)) return false;
  auto& counters = table_.counters();
  counters.open_visitors.fetch_add(1, std::memory_order_relaxed);
  counters.total_visitors.fetch_add(1, std::memory_order_relaxed);
  return true;
}

// The peer text is the one relay() gave open_stream (net::to_string of the visitor's endpoint).
void worker::visitor_gone(const std::string& peer) {
  auto where = net::parse_host_port(peer);
  boost::system::error_code ec;
  auto address = where ? asio::ip::make_address(where->host, ec) : asio::ip::address();
  if (where && !ec) sources_.remove(address);
}

// A visitor accepted just as the data connections went away (the client is reconnecting):
// hold it for a while rather than refuse it.
asio::awaitable<void> worker::relay_when_connected(tcp::socket visitor, std::string peer) {
  ++parked_visitors_;
  const bool connected = co_await wait_for_session(options_.visitor_wait);
  --parked_visitors_;
  if (!connected || !relay(visitor, peer)) {
    spdlog::info("visitor {} reset: no data connection from the client within {} s", peer,
                 options_.visitor_wait.count());
    net::reset_and_close(visitor);
    visitor_gone(peer);
  }
}

asio::awaitable<void> worker::accept_loop() {
  auto& counters = table_.counters();
  while (!stopping_) {
    // No data connection: leave visitors in the kernel's backlog until one arrives.
    if (!least_loaded_session()) {
      co_await wait_for_session(std::chrono::hours(24));
      continue;  // look again: a session, or stopping
    }
    auto [ec, visitor] = co_await net::accept_cloexec(listener_);
    if (stopping_) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      // EMFILE and friends: log, back off briefly, keep serving.
      spdlog::warn("accept on the public listener failed: {}", ec.message());
      asio::steady_timer pause(io_, std::chrono::milliseconds(100));
      co_await pause.async_wait(use_tuple);
      continue;
    }
    net::arm_reset_on_close(visitor);
    boost::system::error_code peer_ec;
    auto peer = visitor.remote_endpoint(peer_ec);
    if (peer_ec) continue;
    auto peer_text = net::to_string(peer);
    if (counters.open_visitors.load(std::memory_order_relaxed) + parked_visitors_ >=
        options_.max_visitors) {
      spdlog::warn("visitor {} refused: {} connections open (the maximum)", peer_text,
                   options_.max_visitors);
      net::reset_and_close(visitor);
      continue;
    }
    // One source may not hold every visitor slot (and the buffers behind them). Refused at once,
    // with a warning at most every 10 s: the refusals are the attacker's to multiply.
    if (!sources_.try_add(peer.address())) {
      if (refusal_log_.allow())
        spdlog::warn(
            "visitor {} refused: {} connections open from its address (the maximum); "
            "{} more refused before this",
            peer_text, options_.max_visitors_per_source, refusal_log_.suppressed());
      net::reset_and_close(visitor);
      continue;
    }
    if (!least_loaded_session()) {
      spawn(io_, relay_when_connected(std::move(visitor), std::move(peer_text)), "parked visitor");
      continue;
    }
    if (!relay(visitor, peer_text)) {
      if (pool_.over_budget() && refusal_log_.allow())
        spdlog::warn(
            "visitor {} refused: relay buffers over budget ({} MiB); {} more refused "
            "before this",
            peer_text, options_.buffer_budget_mb, refusal_log_.suppressed());
      net::reset_and_close(visitor);
      visitor_gone(peer_text);
    }
  }
}

// Stops accepting, gives open streams up to drain_timeout to finish, then ends everything this
// worker started, so that io_context::run() returns with no work left and every owner is
// destroyed after the coroutines that point into it.
asio::awaitable<void> worker::drain_and_exit() {
  if (stopping_) co_return;
  stopping_ = true;
  boost::system::error_code ec;
  listener_.close(ec);
  sessions_changed_.cancel();
  const auto deadline = std::chrono::steady_clock::now() + options_.drain_timeout;
  for (;;) {
    std::size_t open = 0;
    for (auto& s : sessions_) open += s->stream_count();
    if (open == 0 || std::chrono::steady_clock::now() >= deadline) break;
    asio::steady_timer poll(io_, drain_poll);
    co_await poll.async_wait(use_tuple);
  }
  stop_now("worker stopping");
}

// Ends at once: what is still open is reset, never cut short in silence.
void worker::stop_now(const std::string& reason) {
  if (stopped_) return;
  stopped_ = stopping_ = true;
  boost::system::error_code ec;
  listener_.close(ec);
  sessions_changed_.cancel();
  signals_.cancel(ec);
  for (auto& s : std::vector(sessions_)) s->close(reason);
  sessions_.clear();
  channel_.close(ec);
}

}  // namespace culvert::worker
