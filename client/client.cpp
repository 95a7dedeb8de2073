// Client logic: control session with reconnect and reclaim, and the data connections (local
// dialling is in local_dial.cpp).
#include "client/client.hpp"

#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <iostream>

#include "client/http_log.hpp"
#include "shared/log/printable.hpp"
#include "shared/net/address.hpp"
#include "shared/net/socket_options.hpp"
#include "shared/net/spawn.hpp"
#include "shared/protocol/frame_io.hpp"

namespace culvert::client {

namespace asio = boost::asio;
namespace proto = shared::protocol;
using asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;
using shared::net::spawn;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

namespace {

constexpr auto max_backoff = std::chrono::milliseconds(5000);
constexpr auto data_ready_timeout = std::chrono::seconds(15);
// A server answers a bad token only after a delay that doubles per recent failure from the
// address, up to a minute (auth_failure_delay_ms): the answer says what is wrong, where a timeout
// would only retry and make the next delay longer. So the wait for it covers the longest delay.
constexpr auto init_reply_timeout = std::chrono::seconds(65);

std::chrono::milliseconds backoff(unsigned failures) {
  if (failures == 0) return std::chrono::milliseconds(0);
  return std::min(std::chrono::milliseconds(100 << std::min(failures, 8u)), max_backoff);
}

// Refusals worth waiting out while reconnecting (the server restarts or is busy).
bool transient(proto::error_code code) {
  return code == proto::error_code::shutting_down || code == proto::error_code::overloaded ||
         code == proto::error_code::internal;
}

// A server's ERROR text (up to 512 bytes on the wire), made safe for the terminal: a server, or
// anyone on a clear-text path to it, must not be able to send escape sequences or extra lines.
std::string server_text(const std::optional<proto::error_message>& e) {
  return e ? shared::log::printable(e->message, 512) : std::string("malformed ERROR frame");
}

// A control link or multiplexer stays alive while any of its coroutines runs (each holds a
// shared_ptr to it): its lease goes back when the last of them has ended and the object is gone.
template <typename T, typename... Args>
std::shared_ptr<T> make_held(pending_work::lease lease, Args&&... args) {
  return std::shared_ptr<T>(new T(std::forward<Args>(args)...),
                            [held = std::move(lease)](T* p) mutable {
                              delete p;
                              held.release();
                            });
}

std::string state_key(const client_options& o) {
  return o.server + "|" + (o.kind == proto::tunnel_kind::tcp ? "tcp" : "http") + "|" +
         o.local_address() + "|" + o.subdomain;
}

}  // namespace

client::client(asio::io_context& io, client_options options, std::ostream& out)
    : io_(io),
      options_(std::move(options)),
      out_(out),
      state_(options_.state_dir, state_key(options_)),
      control_lost_(io),
      reopen_(io),
      stopped_(io, asio::steady_timer::time_point::max()),
      deadline_(io) {
  auto where = shared::net::parse_host_port(options_.server);
  server_host_ = where ? where->host : options_.server;
  server_port_ = where ? where->port : 0;
  reopen_.expires_at(asio::steady_timer::time_point::max());
  pool_.set_budget(options_.buffer_budget_mb * 1024 * 1024);
  if (options_.tls) {
    control_tls_ = shared::tls::make_client_context({options_.ca_file, options_.insecure});
    data_tls_ = shared::tls::make_psk_client_context();
  }
}

client::~client() {
  work_.when_empty(nullptr);  // leases may outlive us (forced stage): they must not call back
}

void client::start(std::function<void()> on_stop) {
  on_stop_ = std::move(on_stop);
  spawn(io_, run(work_.hold("control session")), "client");
}

void client::stop() {
  if (stopping_) return;
  stopping_ = true;
  spdlog::debug("stopping");
  deadline_.expires_after(stop_deadline);
  deadline_.async_wait([this](boost::system::error_code ec) {
    if (!ec) on_deadline();
  });
  stopped_.expires_at(asio::steady_timer::time_point::min());  // every unless_stopped returns
  if (control_) control_->close("client stopping");
  close_sessions("client stopping");
  control_lost_.cancel();
  reopen_.cancel();
  if (auto hook = std::move(on_stop_)) hook();
  // Nothing else keeps the io_context running once the work is done.
  work_.when_empty([this] {
    spdlog::debug("stopped: everything the client started has finished");
    deadline_.cancel();
  });
}

void client::on_deadline() {
  forced_ = true;
  work_.when_empty(nullptr);
  std::string left;
  for (const auto& what : work_.names()) left += (left.empty() ? "" : ", ") + what;
  if (left.empty()) left = "nothing the client started (a handler queued elsewhere)";
  spdlog::warn("still running {} s after the stop began: {}; stopping the event loop",
               stop_deadline.count(), left);
  io_.stop();
}

void client::finish(int code) {
  if (stopping_) return;  // a stop (Ctrl-C) came first: its exit code stands
  exit_code_ = code;
  stop();
}

void client::close_sessions(const std::string& reason) {
  for (auto& s : std::vector(sessions_)) s->close(reason);
  sessions_.clear();
}

asio::awaitable<void> client::pause(std::chrono::milliseconds how_long) {
  if (how_long.count() == 0 || stopping_) co_return;
  asio::steady_timer timer(io_, how_long);
  // REOPEN cancels reopen_, which cuts every pending back-off short at once; stop() too.
  co_await (timer.async_wait(use_tuple) || reopen_.async_wait(use_tuple) ||
            stopped_.async_wait(use_tuple));
}

namespace {
template <typename T>
asio::awaitable<std::optional<T>> as_optional(asio::awaitable<T> work) {
  co_return co_await std::move(work);
}
}  // namespace

template <typename T>
asio::awaitable<std::optional<T>> client::unless_stopped(asio::awaitable<T> work) {
  if (stopping_) co_return std::nullopt;
  // Through as_optional: Asio flattens `variant<A, B> || C` (a read_result) into variant<A, B, C>.
  auto outcome = co_await (as_optional(std::move(work)) || stopped_.async_wait(use_tuple));
  if (auto* done = std::get_if<0>(&outcome)) co_return std::move(*done);
  co_return std::nullopt;
}

asio::awaitable<std::optional<tcp::socket>> client::connect_to(const std::string& host,
                                                               std::uint16_t port) {
  // An address needs no resolver: Asio resolves on a thread of its own, and a hop to it and back
  // on every visitor's local dial is measurable.
  std::vector<tcp::endpoint> endpoints;
  boost::system::error_code literal_ec;
  const auto literal = asio::ip::make_address(host, literal_ec);
  if (!literal_ec) {
    endpoints.emplace_back(literal, port);
  } else {
    // Not raced against stop(): Asio cannot cancel a lookup (getaddrinfo on its own thread).
    tcp::resolver resolver(io_);
    auto [rec, found] = co_await resolver.async_resolve(host, std::to_string(port), use_tuple);
    if (rec) {
      spdlog::debug("resolving {}: {}", host, rec.message());
      co_return std::nullopt;
    }
    for (const auto& entry : found) endpoints.push_back(entry.endpoint());
  }
  if (stopping_) co_return std::nullopt;
  tcp::socket socket(io_);
  asio::steady_timer timer(io_, options_.connect_timeout);
  auto outcome = co_await (asio::async_connect(socket, endpoints, use_tuple) ||
                           timer.async_wait(use_tuple) || stopped_.async_wait(use_tuple));
  if (outcome.index() != 0) {
    spdlog::debug("connecting to {}:{}: {}", host, port,
                  outcome.index() == 1 ? "timed out" : "stopping");
    co_return std::nullopt;
  }
  auto [ec, endpoint] = std::get<0>(outcome);
  if (ec) {
    spdlog::debug("connecting to {}:{}: {}", host, port, ec.message());
    co_return std::nullopt;
  }
  shared::net::set_nodelay(socket);
  co_return std::move(socket);
}

bool client::reaches_loopback(const tcp::socket& socket) const {
  if (!options_.clear_needs_loopback) return true;
  boost::system::error_code ec;
  const auto peer = socket.remote_endpoint(ec);
  if (!ec && peer.address().is_loopback()) return true;
  spdlog::warn("{} resolved to {}, off this machine: no clear text there", options_.server,
               ec ? ec.message() : shared::net::to_string(peer));
  return false;
}

asio::awaitable<void> client::run(pending_work::lease) {
  bool first = true;
  unsigned failures = 0;
  while (!stopping_) {
    const auto started = std::chrono::steady_clock::now();
    auto keep_going = co_await control_session(first);
    if (!keep_going || stopping_) co_return;
    if (tunnel_) first = false;
    // A session that lasted a while resets the back-off; quick failures grow it.
    failures =
        std::chrono::steady_clock::now() - started > std::chrono::seconds(10) ? 1 : failures + 1;
    const auto wait = backoff(failures);
    spdlog::info("reconnecting to {} in {} ms", options_.server, wait.count());
    co_await pause(wait);
  }
}

// After each wait, `stopping_` is looked at before anything else: a wait that stop() cut short
// failed for that reason alone, not for one to print or retry.
asio::awaitable<bool> client::control_session(bool first) {
  auto socket = co_await connect_to(server_host_, server_port_);
  if (stopping_) co_return false;
  if (socket && !reaches_loopback(*socket)) {
    std::cerr << "culvert: " << options_.server
              << " now leads off this machine; clear text was chosen because it resolved to "
                 "loopback only (--tls encrypts, --no-tls insists on clear text)"
              << std::endl;
    finish(exit_refused);
    co_return false;
  }
  if (!socket) {
    if (first) {
      std::cerr << "culvert: cannot connect to the server at " << options_.server << std::endl;
      finish(exit_unreachable);
      co_return false;
    }
    co_return true;  // keep trying
  }
  auto stream = options_.tls ? shared::net::transport(std::move(*socket), *control_tls_)
                             : shared::net::transport(std::move(*socket));
  if (options_.tls) {
    shared::tls::expect_server_name(stream.native_tls(), server_host_);
    auto shaken = co_await unless_stopped(
        stream.handshake(asio::ssl::stream_base::client, options_.connect_timeout));
    if (!shaken) co_return false;
    if (auto ec = *shaken) {
      if (auto problem = stream.certificate_problem(); !problem.empty()) {
        std::cerr << "culvert: refusing the server at " << options_.server
                  << ": its certificate does not check out: " << problem
                  << " (--ca FILE trusts a private CA; --insecure skips the check)" << std::endl;
        finish(exit_refused);
        co_return false;
      }
      const auto why = shared::net::describe_tls_error(ec);
      if (first) {
        std::cerr << "culvert: TLS handshake with " << options_.server << " failed: " << why
                  << " (does that server use TLS? --no-tls talks to one that does not)"
                  << std::endl;
        finish(exit_unreachable);
        co_return false;
      }
      spdlog::warn("TLS handshake with {} failed: {}", options_.server, why);
      co_return true;
    }
    spdlog::debug("control connection: {}", stream.describe_tls());
  }

  proto::init_message init;
  init.kind = options_.kind;
  init.token = options_.token;
  init.subdomain = options_.subdomain;
  if (tunnel_) {
    init.reclaim = proto::reclaim_request{tunnel_->offer.tunnel_id, tunnel_->offer.secret};
  } else if (auto saved = state_.load()) {
    init.reclaim = proto::reclaim_request{saved->tunnel_id, saved->secret};
  }
  if (auto ec = co_await proto::write_frame(stream, proto::encode(init))) co_return !stopping_;
  asio::steady_timer slow_answer(io_, options_.connect_timeout);
  slow_answer.async_wait([server = options_.server](boost::system::error_code ec) {
    if (!ec)
      spdlog::warn(
          "{} has not answered yet: a server delays refusing a bad token by up to a "
          "minute after repeated ones; waiting for its answer",
          server);
  });
  auto reply = co_await unless_stopped(proto::read_frame(stream, init_reply_timeout));
  slow_answer.cancel();
  if (!reply || stopping_) co_return false;
  auto* f = std::get_if<proto::frame>(&*reply);
  if (!f) {
    spdlog::warn("handshake with {} failed: {}", options_.server,
                 std::get<proto::read_failure>(*reply).what);
    co_return true;
  }
  if (f->header.type == proto::frame_type::error) {
    auto refusal = proto::decode_error_message(f->payload);
    const auto text = server_text(refusal);
    // A busy server is worth waiting for even at the start; other refusals are final then.
    if (refusal &&
        (refusal->code == proto::error_code::overloaded || (!first && transient(refusal->code)))) {
      spdlog::warn("server: {}", text);
      co_return true;
    }
    std::cerr << "culvert: the server refused the tunnel: " << text << std::endl;
    finish(exit_refused);
    co_return false;
  }
  auto offer =
      f->header.type == proto::frame_type::domain ? proto::decode_domain(f->payload) : std::nullopt;
  if (offer) {
    // Printed in the Forwarding line and logs: escaped once, here, where it enters.
    offer->domain = shared::log::printable(offer->domain, 255);
    offer->public_url = shared::log::printable(offer->public_url, 255);
  } else {
    std::cerr << "culvert: the server answered with an unexpected "
              << proto::to_string(f->header.type) << " frame" << std::endl;
    finish(exit_refused);
    co_return false;
  }
  if (auto ec = co_await proto::write_frame(stream, proto::encode_empty(proto::frame_type::ack)))
    co_return !stopping_;
  if (stopping_) co_return false;

  const bool same_tunnel = tunnel_ && tunnel_->offer.tunnel_id == offer->tunnel_id;
  if (!same_tunnel) {
    close_sessions("tunnel closed");  // they belong to a tunnel that no longer exists
    tunnel_ = tunnel_info{
        *offer, ++generation_,
        options_.tls ? shared::tls::derive_data_psk(offer->secret) : shared::tls::psk_bytes{}};
    state_.save(saved_tunnel{offer->tunnel_id, offer->secret, offer->domain});
    out_ << "Forwarding " << offer->public_url << " -> " << options_.local_address() << std::endl;
    for (unsigned i = 0; i < std::max<unsigned>(1, offer->data_connections); ++i)
      spawn(io_,
            data_loop(tunnel_->generation, i, work_.hold(fmt::format("data connection {}", i))),
            "data connection");
  } else {
    spdlog::info("reconnected; {} is still ours", offer->public_url);
    reopen_.cancel();  // any data connection waiting to retry may go now
  }

  control_lost_.expires_at(asio::steady_timer::time_point::max());
  const auto interval = std::chrono::seconds(std::max<int>(1, offer->heartbeat_interval_s));
  auto link = make_held<proto::control_link>(work_.hold("control link"), std::move(stream),
                                             interval, interval * 6);
  proto::control_link::hooks hooks;
  hooks.on_frame = [this](proto::frame&& frame) {
    if (frame.header.type == proto::frame_type::reopen) {
      spdlog::info("server restarted the tunnel's worker; re-opening data connections");
      reopen_.cancel();
    } else if (frame.header.type == proto::frame_type::error) {
      spdlog::warn("server: {}", server_text(proto::decode_error_message(frame.payload)));
    }
  };
  hooks.on_closed = [this](const std::string& reason) {
    if (!stopping_) spdlog::warn("control connection lost: {}", reason);
    control_lost_.cancel();
  };
  link->set_hooks(std::move(hooks));
  control_ = link;
  link->start();
  co_await control_lost_.async_wait(use_tuple);
  control_.reset();
  co_return true;
}

asio::awaitable<void> client::data_loop(std::uint64_t generation, unsigned index,
                                        pending_work::lease) {
  unsigned failures = 0;
  auto current = [&] { return !stopping_ && tunnel_ && tunnel_->generation == generation; };
  while (current()) {
    co_await pause(backoff(failures));
    if (!current()) co_return;
    ++failures;
    auto opened = co_await unless_stopped(open_data_connection(*tunnel_, index));
    if (!opened || !*opened || !current()) continue;
    auto& stream = **opened;

    asio::steady_timer closed(io_, asio::steady_timer::time_point::max());
    shared::net::mux_hooks hooks;
    hooks.dial = [this] { return dial_local(); };
    if (options_.kind == proto::tunnel_kind::http) {
      hooks.make_observer = [this]() -> std::unique_ptr<shared::net::stream_observer> {
        return std::make_unique<http_log_observer>([this](const http_exchange& exchange) {
          out_ << format_exchange(exchange, std::chrono::system_clock::now()) << std::endl;
        });
      };
    }
    hooks.on_stream_closed = [](const shared::net::stream_report& r) {
      if (r.abnormal)
        spdlog::debug("stream {} from {} reset: {}", r.id, shared::log::printable(r.peer),
                      shared::log::printable(r.reason));
    };
    hooks.on_closed = [&closed, index](const std::string& reason) {
      spdlog::info("data connection {} closed: {}", index, reason);
      closed.cancel();
    };
    shared::net::mux_settings settings;
    settings.stream_idle_timeout = options_.stream_idle_timeout;
    settings.max_dials = options_.max_dials;
    auto session = make_held<shared::net::mux_session>(
        work_.hold(fmt::format("data connection {}'s multiplexer", index)), std::move(stream),
        shared::net::mux_session::role::client, settings, std::move(hooks), pool_, windows_);
    sessions_.push_back(session);
    session->start();
    spdlog::debug("data connection {} ready", index);
    failures = 0;
    co_await closed.async_wait(use_tuple);
    std::erase(sessions_, session);
    if (sessions_.empty()) pool_.trim();
  }
}

asio::awaitable<std::optional<shared::net::transport>> client::open_data_connection(
    tunnel_info tunnel, unsigned index) {
  auto socket = co_await connect_to(server_host_, server_port_);
  if (!socket || !reaches_loopback(*socket)) co_return std::nullopt;
  std::optional<shared::net::transport> stream;
  if (options_.tls) {
    // The route goes in clear: a tag derived from the secret that names the tunnel and reveals
    // neither the secret nor the data key. The worker it reaches proves it knows the tunnel's
    // secret, as we do, in the TLS handshake itself.
    shared::net::transport clear(std::move(*socket));
    if (co_await proto::write_frame(
            clear,
            proto::encode(proto::data_route_message{
                proto::protocol_version, shared::tls::derive_route_tag(tunnel.offer.secret)})))
      co_return std::nullopt;
    stream.emplace(std::move(clear.socket()), *data_tls_);
    shared::tls::offer_psk(stream->native_tls(), tunnel.offer.tunnel_id, tunnel.data_key);
    if (auto ec = co_await stream->handshake(asio::ssl::stream_base::client, data_ready_timeout)) {
      if (stopping_) co_return std::nullopt;  // stop() cancelled it (unless_stopped)
      spdlog::warn("data connection {}: TLS handshake failed: {}", index,
                   shared::net::describe_tls_error(ec));
      co_return std::nullopt;
    }
  } else {
    stream.emplace(std::move(*socket));
    proto::data_init_message hello;
    hello.tunnel_id = tunnel.offer.tunnel_id;
    hello.secret = tunnel.offer.secret;
    if (co_await proto::write_frame(*stream, proto::encode(hello))) co_return std::nullopt;
  }
  auto reply = co_await proto::read_frame(*stream, data_ready_timeout);
  auto* f = std::get_if<proto::frame>(&reply);
  if (!f || stopping_) co_return std::nullopt;
  if (f->header.type == proto::frame_type::error) {
    spdlog::warn("data connection {} refused: {}", index,
                 server_text(proto::decode_error_message(f->payload)));
    co_return std::nullopt;  // the control session decides whether the tunnel still exists
  }
  if (f->header.type != proto::frame_type::data_ready) co_return std::nullopt;
  co_return stream;
}

}  // namespace culvert::client
