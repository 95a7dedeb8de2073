// The control port's accept loop and first-frame dispatch (control_listener.hpp). Supervisor,
// one io_context thread.
#include "supervisor/control_listener.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "shared/net/address.hpp"
#include "shared/net/cloexec_socket.hpp"
#include "shared/net/socket_options.hpp"
#include "shared/net/spawn.hpp"
#include "shared/protocol/frame_io.hpp"
#include "shared/tls/tls_contexts.hpp"

namespace culvert::supervisor {

namespace asio = boost::asio;
namespace proto = shared::protocol;
using asio::ip::tcp;
using shared::net::spawn;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

namespace {
// The only frames a connection may open with; anything else is refused at its header.
constexpr proto::frame_type first_frames[] = {proto::frame_type::init, proto::frame_type::data_init,
                                              proto::frame_type::data_route};
constexpr int listen_backlog = 4096;
constexpr auto accept_failure_pause = std::chrono::milliseconds(100);
constexpr std::uint8_t tls_handshake_record = 0x16;  // a TLS record's first byte
}  // namespace

control_listener::control_listener(asio::io_context& io, const config& cfg, admission& a)
    : io_(io),
      config_(cfg),
      admission_(a),
      acceptor_(io),
      places_({.unidentified = cfg.max_pending_handshakes,
               .new_tunnel = cfg.max_pending_handshakes,
               .known_tunnel = cfg.max_pending_reclaims}) {
  if (!cfg.tls_cert.empty()) tls_ = shared::tls::make_server_context(cfg.tls_cert, cfg.tls_key);
  const auto where = shared::net::parse_host_port(cfg.control_address);
  if (tls_)
    spdlog::info("control connections use TLS 1.3 with {}", cfg.tls_cert);
  else if (where && !shared::net::is_loopback_host(where->host))
    spdlog::warn(
        "control port {} is not on loopback and has no TLS (--tls-cert/--tls-key): "
        "tokens, secrets and tunnelled traffic cross the network in clear",
        cfg.control_address);
}

void control_listener::listen() {
  const auto where = shared::net::parse_host_port(config_.control_address);
  if (!where) throw std::runtime_error("bad control address " + config_.control_address);
  const tcp::endpoint endpoint(asio::ip::make_address(where->host), where->port);
  boost::system::error_code error;
  acceptor_ = shared::net::open_listener(io_, endpoint, listen_backlog, error);
  if (error) throw boost::system::system_error(error, "listening on " + config_.control_address);
}

void control_listener::start() {
  spawn(io_, accept_loop(), "control accept loop");
}

void control_listener::close() {
  closed_ = true;
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  places_.shed_all();
}

asio::awaitable<void> control_listener::accept_loop() {
  while (!closed_) {
    auto [ec, socket] = co_await shared::net::accept_cloexec(acceptor_);
    if (closed_) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      // EMFILE and friends must not end the loop: back off and keep serving.
      spdlog::warn("accept on the control port failed: {}", ec.message());
      asio::steady_timer pause(io_, accept_failure_pause);
      co_await pause.async_wait(use_tuple);
      continue;
    }
    // Never refused for want of room: when the places are full, the connection that has waited
    // longest without a first frame makes way (handshake_slots), so idle ones cannot lock out a
    // client whose first frame follows its connect at once.
    spawn(io_, handshake(std::move(socket)), "handshake");
    log_shed();
  }
}

void control_listener::log_shed() {
  std::uint64_t unused = 0;
  if (places_.shed_total() != shed_logged_ &&
      shed_log_.allow(std::chrono::steady_clock::now(), unused)) {
    spdlog::warn("handshake places full: closed {} slow handshake(s) to admit newer ones",
                 places_.shed_total() - shed_logged_);
    shed_logged_ = places_.shed_total();
  }
}

asio::awaitable<void> control_listener::handshake(tcp::socket socket) {
  using namespace asio::experimental::awaitable_operators;
  boost::system::error_code ec;
  const auto peer = socket.remote_endpoint(ec);
  if (ec) co_return;
  const auto peer_text = shared::net::to_string(peer);
  auto per_address = handshakes_per_address_.try_acquire(source_key(peer.address()),
                                                         config_.max_handshakes_per_address);
  if (!per_address) {
    shared::net::transport clear(std::move(socket));
    clear.try_send_now(proto::encode(proto::error_message{
        proto::error_code::overloaded, "too many handshakes from your address; retry later"}));
    clear.close();
    co_return;
  }
  // Shedding shuts the socket down but leaves the descriptor to this frame, so every wait below
  // ends as if the peer had gone, and the descriptor cannot be reused under us. The place is
  // released before the socket leaves the handshake (to a control link or a worker).
  const int fd = socket.native_handle();
  handshake_place place{places_.admit([fd] { ::shutdown(fd, SHUT_RDWR); }), std::move(per_address)};
  shared::net::set_nodelay(socket);
  const auto deadline = std::chrono::steady_clock::now() + config_.handshake_timeout;
  const auto timeout_text = "no INIT, DATA_INIT or DATA_ROUTE within " +
                            std::to_string(config_.handshake_timeout.count()) + " s";

  // One port serves both: a TLS record starts with 0x16, our frames with a length's high byte (0).
  asio::steady_timer timer(io_, deadline);
  auto readable = co_await (socket.async_wait(tcp::socket::wait_read, use_tuple) ||
                            timer.async_wait(use_tuple));
  if (readable.index() == 1) {
    spdlog::info("{}: handshake timed out", peer_text);
    shared::net::transport clear(std::move(socket));
    co_await proto::refuse(clear, proto::error_code::handshake_timeout, timeout_text);
    co_return;
  }
  std::uint8_t first_byte = 0;
  if (::recv(socket.native_handle(), &first_byte, 1, MSG_PEEK | MSG_DONTWAIT) != 1) co_return;
  const bool tls = first_byte == tls_handshake_record;
  if (tls && !tls_) {
    spdlog::info("{}: a TLS client, but this server has no certificate (--tls-cert); closed",
                 peer_text);
    co_return;  // a clear-text ERROR would only confuse its TLS stack
  }
  auto stream = tls ? shared::net::transport(std::move(socket), *tls_)
                    : shared::net::transport(std::move(socket));
  if (tls) {
    if (auto failed = co_await stream.handshake(asio::ssl::stream_base::server,
                                                deadline - std::chrono::steady_clock::now())) {
      spdlog::info("{}: TLS handshake failed: {}", peer_text,
                   shared::net::describe_tls_error(failed));
      co_return;
    }
  }

  auto result = co_await proto::read_frame(
      stream, deadline - std::chrono::steady_clock::now(),
      {.max_payload = proto::max_control_payload, .accepted = first_frames});
  if (auto* failure = std::get_if<proto::read_failure>(&result)) {
    switch (failure->why) {
      case proto::read_failure::kind::closed:
      case proto::read_failure::kind::io_error:
        co_return;
      case proto::read_failure::kind::timed_out:
        spdlog::info("{}: handshake timed out", peer_text);
        co_await proto::refuse(stream, proto::error_code::handshake_timeout, timeout_text);
        co_return;
      case proto::read_failure::kind::malformed:
        spdlog::info("{}: malformed first frame: {}", peer_text, failure->what);
        co_await proto::refuse(stream, proto::error_code::protocol_error, failure->what);
        co_return;
    }
  }
  auto& first = std::get<proto::frame>(result);
  const std::string needs_tls =
      "this server requires TLS: run culvert with --tls (and --ca FILE for a private CA)";
  if (first.header.type == proto::frame_type::init) {
    auto init = proto::decode_init(first.payload);
    if (!init) {
      co_await proto::refuse(stream, proto::error_code::protocol_error, "malformed INIT");
      co_return;
    }
    if (init->version != proto::protocol_version) {
      co_await proto::refuse(stream, proto::error_code::version_mismatch,
                             "protocol version " + std::to_string(init->version) +
                                 " is not supported; this server speaks version " +
                                 std::to_string(proto::protocol_version));
      co_return;
    }
    if (tls_ && !tls) {
      spdlog::info("{}: refused: INIT in clear on a TLS server", peer_text);
      co_await proto::refuse(stream, proto::error_code::protocol_error, needs_tls);
      co_return;
    }
    // A reclaim that proves its tunnel leaves the new tunnels' budget: a flood of new handshakes
    // cannot keep a client from getting its tunnel back within the grace period.
    const bool known = admission_.reclaims_known_tunnel(*init);
    if (!place.ticket.move_to(known ? handshake_stage::known_tunnel : handshake_stage::new_tunnel))
      co_return;
    co_await admission_.open_tunnel(std::move(stream), std::move(*init), place);
  } else if (first.header.type == proto::frame_type::data_init) {
    auto data_init = proto::decode_data_init(first.payload);
    if (!data_init || data_init->version != proto::protocol_version) {
      co_await proto::refuse(stream, proto::error_code::protocol_error, "malformed DATA_INIT");
      co_return;
    }
    if (tls_) {  // in TLS, data connections are routed in clear and keyed by the tunnel secret
      co_await proto::refuse(stream, proto::error_code::protocol_error, needs_tls);
      co_return;
    }
    co_await admission_.attach_data(std::move(stream), *data_init, place);
  } else if (first.header.type == proto::frame_type::data_route && tls_ && !tls) {
    auto route = proto::decode_data_route(first.payload);
    if (!route || route->version != proto::protocol_version) {
      co_await proto::refuse(stream, proto::error_code::protocol_error, "malformed DATA_ROUTE");
      co_return;
    }
    co_await admission_.route_data(std::move(stream), *route, place);
  } else {  // a DATA_ROUTE on a clear-text server, or in TLS
    co_await proto::refuse(
        stream, proto::error_code::protocol_error,
        "expected INIT or DATA_INIT, got " + std::string(proto::to_string(first.header.type)));
  }
}

}  // namespace culvert::supervisor
