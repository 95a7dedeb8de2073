// Admission (admission.hpp): tokens, limits, names, ports, reclaims and data-connection proofs.
// Supervisor, one io_context thread.
#include "supervisor/admission.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "shared/net/address.hpp"
#include "shared/protocol/frame_io.hpp"
#include "shared/util/random.hpp"
#include "supervisor/public_url.hpp"

namespace culvert::supervisor {

namespace asio = boost::asio;
namespace proto = shared::protocol;
namespace ipc = shared::ipc;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

namespace {
constexpr proto::frame_type ack_frame[] = {proto::frame_type::ack};
// A generated name may happen to be one a token reserved; draw again at most this often.
constexpr int max_name_draws = 8;
}  // namespace

admission::admission(asio::io_context& io, const config& cfg, tunnel_lifecycle& tunnels,
                     worker_manager& workers)
    : io_(io),
      config_(cfg),
      tunnels_(tunnels),
      workers_(workers),
      stopped_(io, asio::steady_timer::time_point::max()) {
  if (!cfg.tokens_file.empty()) {
    std::vector<std::string> warnings;
    tokens_ = token_registry::load_file(cfg.tokens_file, cfg.max_tunnels_per_token, &warnings);
    for (const auto& w : warnings) spdlog::warn("{}", w);
  } else if (!cfg.tokens.empty()) {
    tokens_ = token_registry::from_tokens(cfg.tokens, cfg.max_tunnels_per_token);
  }
  throttle_ = auth_throttle(auth_throttle_settings{.base_delay = cfg.auth_failure_delay});
}

void admission::stop_waiting() {
  stopped_.cancel();
}

bool admission::reclaims_known_tunnel(const proto::init_message& init) const {
  return init.reclaim && tunnels_.proves(init.reclaim->tunnel_id, init.reclaim->secret);
}

asio::awaitable<const token_policy*> admission::authenticate(shared::net::transport& stream,
                                                             const std::string& token,
                                                             const std::string& source,
                                                             const std::string& peer_text,
                                                             handshake_place& place) {
  using namespace asio::experimental::awaitable_operators;
  if (const token_policy* who = tokens_.authenticate(token)) {
    if (!tokens_.open()) throttle_.record_success(source);
    co_return who;
  }
  // Every bad token waits the same, whatever was wrong with it; repeated ones from one source
  // wait longer. The wait gives the handshake places back (a waiting refusal must not lock out
  // others for up to 60 s) and is counted apart, per source and in all; past those limits the
  // connection is closed at once without an answer, which tells a guesser nothing sooner.
  const auto now = std::chrono::steady_clock::now();
  const auto delay = throttle_.delay_before_refusal(source, now);
  throttle_.record_failure(source, now);
  place.release();
  auto waiting = refusals_waiting_.try_acquire(source, config_.max_handshakes_per_address);
  auto waiting_in_all = refusals_waiting_.try_acquire("", config_.max_pending_handshakes);
  if (!waiting || !waiting_in_all) {
    spdlog::info("{}: refused: bad token, closed without an answer (too many refusals waiting)",
                 peer_text);
    stream.close();
    co_return nullptr;
  }
  spdlog::info("{}: refused: bad token (after {} ms)", peer_text, delay.count());
  asio::steady_timer wait(io_, delay);
  auto ended = co_await (wait.async_wait(use_tuple) || stopped_.async_wait(use_tuple));
  if (ended.index() == 1 || tunnels_.shutting_down()) {
    stream.close();  // shutting down: the refusal's answer would only delay the exit
    co_return nullptr;
  }
  co_await proto::refuse(stream, proto::error_code::bad_token,
                         std::string(token_registry::refusal));
  co_return nullptr;
}

std::string admission::label_of(const std::string& domain) const {
  return domain.substr(0, domain.size() - std::min(domain.size(), config_.base_domain.size() + 1));
}

asio::awaitable<tunnel_ptr> admission::new_tunnel(shared::net::transport& stream,
                                                  const proto::init_message& init,
                                                  const token_policy& who,
                                                  const std::string& source,
                                                  const std::string& peer_text) {
  if (!tunnels_.has_free_slot()) {
    spdlog::info("{}: refused: tunnel limit {} reached", peer_text, config_.max_tunnels);
    co_await proto::refuse(
        stream, proto::error_code::no_capacity,
        "this server is at its limit of " + std::to_string(config_.max_tunnels) + " tunnels");
    co_return nullptr;
  }
  std::vector<usage_counter::lease> leases;
  if (!tokens_.open()) {
    auto lease = tunnels_per_token_.try_acquire(who.name, who.max_tunnels);
    if (!lease) {
      spdlog::info("{}: refused: token {} is at its limit of {} tunnels", peer_text, who.name,
                   who.max_tunnels);
      co_await proto::refuse(
          stream, proto::error_code::no_capacity,
          "this token is at its limit of " + std::to_string(who.max_tunnels) + " tunnels");
      co_return nullptr;
    }
    leases.push_back(std::move(*lease));
  }
  auto address_lease = tunnels_per_address_.try_acquire(source, config_.max_tunnels_per_address);
  if (!address_lease) {
    spdlog::info("{}: refused: {} has {} tunnels (the limit per address)", peer_text, source,
                 config_.max_tunnels_per_address);
    co_await proto::refuse(stream, proto::error_code::no_capacity,
                           "your address is at its limit of " +
                               std::to_string(config_.max_tunnels_per_address) + " tunnels");
    co_return nullptr;
  }
  leases.push_back(std::move(*address_lease));
  if (auto why = tokens_.check_requested_name(&who, init.subdomain)) {
    spdlog::info("{}: refused: {}", peer_text, *why);
    co_await proto::refuse(stream, proto::error_code::name_invalid, *why);
    co_return nullptr;
  }
  auto& domains = tunnels_.domains();
  auto name = domains.take(init.subdomain);
  const auto reserved_by_other = [&] {
    return init.subdomain.empty() && name.status == domain_pool::result::ok &&
           tokens_.reserved_by_other(&who, label_of(name.domain));
  };
  for (int draw = 0; draw < max_name_draws && reserved_by_other(); ++draw) {
    auto next = domains.take(init.subdomain);
    domains.give_back(name.domain);
    name = std::move(next);
  }
  if (reserved_by_other()) {
    domains.give_back(name.domain);
    spdlog::warn("{}: refused: only reserved generated names were drawn", peer_text);
    co_await proto::refuse(stream, proto::error_code::no_capacity,
                           "no free generated name; ask for a name (--subdomain)");
    co_return nullptr;
  }
  if (name.status != domain_pool::result::ok) {
    const auto code = name.status == domain_pool::result::name_taken ? proto::error_code::name_taken
                      : name.status == domain_pool::result::name_invalid
                          ? proto::error_code::name_invalid
                          : proto::error_code::no_capacity;
    spdlog::info("{}: refused: {}", peer_text, name.error);
    co_await proto::refuse(stream, code, name.error);
    co_return nullptr;
  }
  auto listener = tunnels_.ports().bind_any();
  if (!listener) {
    domains.give_back(name.domain);
    spdlog::warn("{}: refused: no free public port in {}-{}", peer_text, config_.port_min,
                 config_.port_max);
    co_await proto::refuse(stream, proto::error_code::no_capacity, "no free public port");
    co_return nullptr;
  }
  co_return tunnels_.add(std::move(*listener), name.domain, init.kind, std::move(leases));
}

asio::awaitable<void> admission::open_tunnel(shared::net::transport stream,
                                             proto::init_message init, handshake_place& place) {
  boost::system::error_code ec;
  const auto peer = stream.socket().remote_endpoint(ec);
  const auto peer_text = shared::net::to_string(peer);
  if (tunnels_.shutting_down()) {
    co_await proto::refuse(stream, proto::error_code::shutting_down, "the server is shutting down");
    co_return;
  }
  const auto source = source_key(peer.address());
  const token_policy* who = co_await authenticate(stream, init.token, source, peer_text, place);
  if (!who) co_return;

  // A client that reconnects with its tunnel's id and secret gets the same tunnel back. A wrong
  // secret is indistinguishable from an unknown id: the request is then served as a new tunnel.
  tunnel_ptr t =
      reclaims_known_tunnel(init) ? tunnels_.find_by_id(init.reclaim->tunnel_id) : nullptr;
  const bool reclaimed = t != nullptr;
  if (!t) t = co_await new_tunnel(stream, init, *who, source, peer_text);
  if (!t) co_return;

  proto::domain_message offer;
  offer.tunnel_id = t->id;
  offer.secret = t->secret;
  offer.public_port = t->port;
  offer.heartbeat_interval_s = std::uint16_t(config_.heartbeat_interval.count());
  offer.data_connections = config_.data_connections;
  offer.domain = t->domain;
  offer.public_url = public_url(*t, config_);
  auto write_error = co_await proto::write_frame(stream, proto::encode(offer));
  // Never `co_await` inside `?:`: GCC 12 then destroys the temporary twice (a double free).
  proto::read_result reply =
      proto::read_failure{proto::read_failure::kind::io_error, write_error.message()};
  if (!write_error)
    reply = co_await proto::read_frame(
        stream, config_.handshake_timeout,
        {.max_payload = proto::max_control_payload, .accepted = ack_frame});
  auto* ack = std::get_if<proto::frame>(&reply);
  if (!ack || ack->header.type != proto::frame_type::ack) {
    spdlog::info("{}: no ACK for {}; {}", peer_text, t->domain,
                 reclaimed ? "tunnel left as it was" : "released");
    if (ack) co_await proto::refuse(stream, proto::error_code::protocol_error, "expected ACK");
    if (!reclaimed && t->state == ipc::slot_state::starting) tunnels_.release(t);
    co_return;
  }
  if (t->state == ipc::slot_state::stopping) {  // shut down while we waited for the ACK
    co_await proto::refuse(stream, proto::error_code::shutting_down, "the server is shutting down");
    co_return;
  }

  spdlog::info("{}: {} {} tunnel {} on port {}", peer_text, reclaimed ? "reclaimed" : "opened",
               init.kind == proto::tunnel_kind::tcp ? "tcp" : "http", t->domain, t->port);
  place.release();  // the socket leaves the handshake: shedding must not reach it any more
  tunnels_.attach_control(t, std::move(stream));
  if (!t->worker_pid) workers_.start(t);  // a new tunnel, or one whose worker restart is pending
}

asio::awaitable<void> admission::attach_data(shared::net::transport stream,
                                             proto::data_init_message init,
                                             handshake_place& place) {
  auto t = tunnels_.find_by_id(init.tunnel_id);
  if (!t || t->state == ipc::slot_state::stopping ||
      !shared::util::equal_constant_time(t->secret, init.secret)) {
    boost::system::error_code ec;
    spdlog::info("{}: data connection refused: unknown tunnel or wrong secret",
                 shared::net::to_string(stream.socket().remote_endpoint(ec)));
    co_await proto::refuse(stream, proto::error_code::unknown_tunnel,
                           "no tunnel with this id and secret");
    co_return;
  }
  place.release();  // proven: it leaves the handshake places, and goes to the worker
  co_await workers_.deliver_data(t, std::move(stream.socket()), false);
}

// TLS servers: the client named its tunnel in clear by its route tag, which only a holder of
// the secret can compute (a tunnel id, in the table or a log, routes nothing), so strangers
// never reach a worker's TLS handshake slots. Whether the client holds the secret is settled by
// the TLS handshake with the tunnel's worker, which alone knows the key derived from it.
asio::awaitable<void> admission::route_data(shared::net::transport stream,
                                            proto::data_route_message route,
                                            handshake_place& place) {
  auto t = tunnels_.find_by_route_tag(route.route_tag);
  if (!t || t->state == ipc::slot_state::stopping) {
    boost::system::error_code ec;
    spdlog::info("{}: data connection refused: unknown route tag",
                 shared::net::to_string(stream.socket().remote_endpoint(ec)));
    co_await proto::refuse(stream, proto::error_code::unknown_tunnel,
                           "no tunnel with this route tag");
    co_return;
  }
  place.release();  // the worker's TLS handshake proves the secret, under its own limits
  co_await workers_.deliver_data(t, std::move(stream.socket()), true);
}

}  // namespace culvert::supervisor
