// Supervisor logic: handshakes, tunnel life cycle (active -> held -> stopping -> free), worker
// start/restart/reaping and data-connection hand-over. Everything runs on one io_context thread,
// so the tunnel map needs no lock; every wait on a client is bounded by a timer.
#include "supervisor/supervisor.hpp"

#include <openssl/crypto.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <charconv>
#include <csignal>
#include <cstring>

#include "shared/log/printable.hpp"
#include "shared/net/address.hpp"
#include "shared/net/cloexec_socket.hpp"
#include "shared/net/socket_options.hpp"
#include "shared/net/spawn.hpp"
#include "shared/protocol/frame_io.hpp"
#include "shared/tls/tls_contexts.hpp"
#include "shared/util/random.hpp"
#include "supervisor/worker_spawner.hpp"

namespace culvert::supervisor {

namespace asio = boost::asio;
namespace proto = shared::protocol;
namespace ipc = shared::ipc;
using asio::ip::tcp;
using shared::net::spawn;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

namespace {

constexpr int worker_exit_fatal = 78;         // culvert-worker's "do not respawn" code
constexpr std::size_t max_waiting_data = 32;  // data connections queued for a starting worker
constexpr auto worker_kill_deadline = std::chrono::seconds(8);  // > the worker's 5 s drain
constexpr auto quick_exit = std::chrono::seconds(2);            // a worker that dies this fast...
constexpr unsigned max_quick_failures = 6;                      // ...this often in a row is broken

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* name = ::sigabbrev_np(WTERMSIG(status));
    return std::string("killed by SIG") + (name ? name : std::to_string(WTERMSIG(status)).c_str());
  }
  return "ended with status " + std::to_string(status);
}

// Where a route tag is filed in by_route_: its first 8 bytes.
std::uint64_t route_index(const proto::route_tag_bytes& tag) {
  std::uint64_t index = 0;
  std::memcpy(&index, tag.data(), sizeof(index));
  return index;
}

ipc::tunnel_kind table_kind(proto::tunnel_kind kind) {
  return kind == proto::tunnel_kind::tcp ? ipc::tunnel_kind::tcp : ipc::tunnel_kind::http;
}

// The only frames a connection may open with; anything else is refused at its header.
constexpr proto::frame_type first_frames[] = {proto::frame_type::init, proto::frame_type::data_init,
                                              proto::frame_type::data_route};
constexpr proto::frame_type ack_frame[] = {proto::frame_type::ack};

}  // namespace

supervisor::supervisor(asio::io_context& io, config cfg)
    : io_(io),
      config_(std::move(cfg)),
      control_(io),
      domains_(config_.base_domain, shared::util::random_u64()),
      ports_(io, config_.public_bind, config_.port_min, config_.port_max),
      worker_path_(config_.worker_path.empty() ? default_worker_path(!config_.tls_cert.empty())
                                               : config_.worker_path),
      child_signals_(io, SIGCHLD),
      stop_signals_(io, SIGTERM, SIGINT),
      hangup_signal_(io, SIGHUP) {
  // Read the key and tokens now, while the files are still readable (before any privilege drop).
  if (!config_.tokens_file.empty()) {
    std::vector<std::string> warnings;
    tokens_ =
        token_registry::load_file(config_.tokens_file, config_.max_tunnels_per_token, &warnings);
    for (const auto& w : warnings) spdlog::warn("{}", w);
  } else if (!config_.tokens.empty()) {
    tokens_ = token_registry::from_tokens(config_.tokens, config_.max_tunnels_per_token);
  }
  throttle_ = auth_throttle(auth_throttle_settings{.base_delay = config_.auth_failure_delay});
  handshakes_ = handshake_slots({.unidentified = config_.max_pending_handshakes,
                                 .new_tunnel = config_.max_pending_handshakes,
                                 .known_tunnel = config_.max_pending_reclaims});
  if (!config_.tls_cert.empty())
    tls_ = shared::tls::make_server_context(config_.tls_cert, config_.tls_key);
  const auto where = shared::net::parse_host_port(config_.control_address);
  if (tls_)
    spdlog::info("control connections use TLS 1.3 with {}", config_.tls_cert);
  else if (where && !shared::net::is_loopback_host(where->host))
    spdlog::warn(
        "control port {} is not on loopback and has no TLS (--tls-cert/--tls-key): "
        "tokens, secrets and tunnelled traffic cross the network in clear",
        config_.control_address);
}

supervisor::~supervisor() {
  // Workers notice the channel's EOF (and PR_SET_PDEATHSIG) and exit on their own.
  if (spawner_)
    for (auto& [pid, t] : by_worker_pid_) spawner_->signal(t->slot, SIGTERM);
}

void supervisor::start() {
  // Looked up first: a missing account stops us before anything is bound or created.
  if (running_as_root()) {
    worker_account_ = find_account(config_.user);
    if (!worker_account_)
      throw std::runtime_error("user '" + config_.user +
                               "' (--user, the account workers run as) does not exist; create it "
                               "or name another unprivileged account");
    if (worker_account_->uid == 0)
      throw std::runtime_error("user '" + config_.user +
                               "' (--user) has uid 0; workers read internet traffic and must run "
                               "unprivileged");
  }
  // A segment left by an earlier run was handed to the worker account: that owner is ours too.
  table_ = std::make_unique<ipc::tunnel_table_owner>(
      config_.instance, config_.max_tunnels, config_.base_domain,
      worker_account_ ? std::optional<uid_t>(worker_account_->uid) : std::nullopt);
  // Workers (and we, after the drop) map it read-write and we unlink it at exit as that account.
  if (worker_account_) table_->grant_to(worker_account_->uid, worker_account_->gid);
  for (std::uint32_t slot = config_.max_tunnels; slot > 0; --slot) free_slots_.push_back(slot - 1);

  const auto where = shared::net::parse_host_port(config_.control_address);
  if (!where) throw std::runtime_error("bad control address " + config_.control_address);
  const tcp::endpoint endpoint(asio::ip::make_address(where->host), where->port);
  boost::system::error_code listen_error;
  control_ = shared::net::open_listener(io_, endpoint, 4096, listen_error);
  if (listen_error)
    throw boost::system::system_error(listen_error, "listening on " + config_.control_address);
  start_spawner();
  if (worker_account_) {
    // Everything that needed root is done (TLS key read, control port bound, table created). Only
    // public ports below 1024, bound per tunnel later, still need a privilege: keep just that one.
    const bool low_ports = config_.port_min < 1024;
    drop_privileges(*worker_account_,
                    low_ports ? net_bind_service_capability() : keep_no_capabilities);
    spdlog::info("dropped root: now user {} (uid {}, gid {}), no_new_privs, not dumpable, {}",
                 worker_account_->name, worker_account_->uid, worker_account_->gid,
                 low_ports ? "keeping only CAP_NET_BIND_SERVICE (public ports below 1024)"
                           : "no capabilities");
    spdlog::info(
        "kept from root: the control listener, open files, and the tunnel table {} "
        "(now owned by {})",
        table_->name(), worker_account_->name);
    // Every tunnel would fail at exec otherwise; say it once, now, with the cause.
    if (::access(worker_path_.c_str(), X_OK) != 0)
      throw std::runtime_error("worker executable " + worker_path_ + " is not executable by user " +
                               worker_account_->name + ": access: " + std::strerror(errno) +
                               " (the file and every directory on its path need o+x)");
  } else {
    spdlog::info("not started as root (uid {}): --user is not used; workers get no_new_privs",
                 ::getuid());
  }
  spdlog::info("control listening on {}", shared::net::to_string(control_.local_endpoint()));
  spdlog::info("tunnels: *.{} on {} ports {}-{}, at most {}; shared table {}", config_.base_domain,
               config_.public_bind, config_.port_min, config_.port_max, config_.max_tunnels,
               table_->name());
  const std::uint32_t ports = std::uint32_t(config_.port_max) - config_.port_min + 1;
  if (ports < config_.max_tunnels)
    spdlog::warn("the port range {}-{} holds {} ports: at most {} tunnels, not max_tunnels {}",
                 config_.port_min, config_.port_max, ports, ports, config_.max_tunnels);
  if (tokens_.open())
    spdlog::warn("no tokens configured: any client may open tunnels");
  else
    spdlog::info("{} token(s) accepted", tokens_.size());

  spawn(io_, reap_loop(), "child reaper");
  spawn(io_, accept_loop(), "control accept loop");
  stop_signals_.async_wait([this](boost::system::error_code ec, int signal) {
    if (ec) return;
    spdlog::info("signal {}: shutting down", signal);
    spawn(io_, shutdown(), "shutdown");
  });
  wait_for_hangup();
}

// Forked while still root: the only process that may start workers under their own uids.
void supervisor::start_spawner() {
  spawner_settings settings{worker_path_, worker_account_, std::nullopt, config_.max_tunnels};
  if (worker_account_ && config_.worker_uid_base) {
    if (auto conflict =
            worker_uid_conflict(config_.worker_uid_base, config_.max_tunnels, *worker_account_))
      throw std::runtime_error("worker uids " + std::to_string(config_.worker_uid_base) + "-" +
                               std::to_string(config_.worker_uid_base + config_.max_tunnels - 1) +
                               " (--worker-uid-base, one per tunnel) are not free: " + *conflict +
                               "; choose another base");
    settings.worker_uid_base = config_.worker_uid_base;
  }
  spawner_ = worker_spawner::start(settings);
  if (settings.worker_uid_base)
    spdlog::info(
        "workers start as uid and gid {} + slot, one account per tunnel, with no_new_privs and "
        "no capabilities (spawner {} keeps CAP_SETUID, CAP_SETGID and CAP_KILL)",
        *settings.worker_uid_base, spawner_->pid());
  else if (worker_account_)
    spdlog::warn(
        "--worker-uid-base 0: every worker runs as {}, so a compromised worker can signal the "
        "other tenants' workers",
        worker_account_->name);
  if (worker_account_ && (worker_account_->uid == 65534 || worker_account_->name == "nobody"))
    spdlog::warn(
        "--user {}: the supervisor shares its uid with every other daemon running as nobody, "
        "which may signal it; create a dedicated account (useradd --system culvert) and use "
        "--user culvert",
        worker_account_->name);
}

// SIGHUP would end the process without cleaning up; nothing is reloaded yet, so say so.
void supervisor::wait_for_hangup() {
  hangup_signal_.async_wait([this](boost::system::error_code ec, int) {
    if (ec) return;
    spdlog::warn(
        "SIGHUP: nothing is reloaded while running; restart the supervisor to apply "
        "configuration or tokens-file changes");
    wait_for_hangup();
  });
}

// ---- Control port -------------------------------------------------------------------------

asio::awaitable<void> supervisor::accept_loop() {
  while (!stopping_) {
    auto [ec, socket] = co_await shared::net::accept_cloexec(control_);
    if (stopping_) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      // EMFILE and friends must not end the loop: back off and keep serving.
      spdlog::warn("accept on the control port failed: {}", ec.message());
      asio::steady_timer pause(io_, std::chrono::milliseconds(100));
      co_await pause.async_wait(use_tuple);
      continue;
    }
    // Never refused for want of room: when the places are full, the connection that has waited
    // longest without a first frame makes way (handshake_slots), so idle ones cannot lock out a
    // client whose first frame follows its connect at once.
    spawn(io_, handshake(std::move(socket)), "handshake");
    std::uint64_t unused = 0;
    if (handshakes_.shed_total() != shed_logged_ &&
        shed_log_.allow(std::chrono::steady_clock::now(), unused)) {
      spdlog::warn("handshake places full: closed {} slow handshake(s) to admit newer ones",
                   handshakes_.shed_total() - shed_logged_);
      shed_logged_ = handshakes_.shed_total();
    }
  }
}

asio::awaitable<void> supervisor::handshake(tcp::socket socket) {
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
  handshake_place place{handshakes_.admit([fd] { ::shutdown(fd, SHUT_RDWR); }),
                        std::move(per_address)};
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
  const bool tls = first_byte == 0x16;
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
    const bool known =
        init->reclaim && proves_tunnel(init->reclaim->tunnel_id, init->reclaim->secret);
    if (!place.ticket.move_to(known ? handshake_stage::known_tunnel : handshake_stage::new_tunnel))
      co_return;
    co_await open_tunnel(std::move(stream), std::move(*init), place);
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
    co_await attach_data(std::move(stream), *data_init, place);
  } else if (first.header.type == proto::frame_type::data_route && tls_ && !tls) {
    auto route = proto::decode_data_route(first.payload);
    if (!route || route->version != proto::protocol_version) {
      co_await proto::refuse(stream, proto::error_code::protocol_error, "malformed DATA_ROUTE");
      co_return;
    }
    co_await route_data(std::move(stream), *route, place);
  } else {  // a DATA_ROUTE on a clear-text server, or in TLS
    co_await proto::refuse(
        stream, proto::error_code::protocol_error,
        "expected INIT or DATA_INIT, got " + std::string(proto::to_string(first.header.type)));
  }
}

bool supervisor::proves_tunnel(std::uint64_t id, const proto::secret_bytes& secret) const {
  auto t = find_by_id(id);
  return t && t->state != ipc::slot_state::stopping &&
         shared::util::equal_constant_time(t->secret, secret);
}

asio::awaitable<const token_policy*> supervisor::authenticate(shared::net::transport& stream,
                                                              const std::string& token,
                                                              const std::string& source,
                                                              const std::string& peer_text,
                                                              handshake_place& place) {
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
  co_await wait.async_wait(use_tuple);
  co_await proto::refuse(stream, proto::error_code::bad_token,
                         std::string(token_registry::refusal));
  co_return nullptr;
}

std::string supervisor::label_of(const std::string& domain) const {
  return domain.substr(0, domain.size() - std::min(domain.size(), config_.base_domain.size() + 1));
}

supervisor::tunnel_ptr supervisor::find_by_id(std::uint64_t id) const {
  auto it = tunnels_.find(id);
  return it == tunnels_.end() ? nullptr : it->second;
}

supervisor::tunnel_ptr supervisor::find_by_route_tag(const proto::route_tag_bytes& tag) const {
  auto it = by_route_.find(route_index(tag));
  if (it == by_route_.end() || !shared::util::equal_constant_time(it->second->route_tag, tag))
    return nullptr;
  return it->second;
}

asio::awaitable<void> supervisor::open_tunnel(shared::net::transport stream,
                                              proto::init_message init, handshake_place& place) {
  boost::system::error_code ec;
  const auto peer_text = shared::net::to_string(stream.socket().remote_endpoint(ec));
  if (stopping_) {
    co_await proto::refuse(stream, proto::error_code::shutting_down, "the server is shutting down");
    co_return;
  }
  const auto source = source_key(stream.socket().remote_endpoint(ec).address());
  const token_policy* who = co_await authenticate(stream, init.token, source, peer_text, place);
  if (!who) co_return;

  // A client that reconnects with its tunnel's id and secret gets the same tunnel back. A wrong
  // secret is indistinguishable from an unknown id: the request is then served as a new tunnel.
  tunnel_ptr t;
  if (init.reclaim) {
    auto held = find_by_id(init.reclaim->tunnel_id);
    if (held && held->state != ipc::slot_state::stopping &&
        shared::util::equal_constant_time(held->secret, init.reclaim->secret))
      t = held;
  }
  const bool reclaimed = t != nullptr;

  if (!t) {
    if (free_slots_.empty()) {
      spdlog::info("{}: refused: tunnel limit {} reached", peer_text, config_.max_tunnels);
      co_await proto::refuse(
          stream, proto::error_code::no_capacity,
          "this server is at its limit of " + std::to_string(config_.max_tunnels) + " tunnels");
      co_return;
    }
    std::vector<usage_counter::lease> leases;
    if (!tokens_.open()) {
      auto lease = tunnels_per_token_.try_acquire(who->name, who->max_tunnels);
      if (!lease) {
        spdlog::info("{}: refused: token {} is at its limit of {} tunnels", peer_text, who->name,
                     who->max_tunnels);
        co_await proto::refuse(
            stream, proto::error_code::no_capacity,
            "this token is at its limit of " + std::to_string(who->max_tunnels) + " tunnels");
        co_return;
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
      co_return;
    }
    leases.push_back(std::move(*address_lease));
    if (auto why = tokens_.check_requested_name(who, init.subdomain)) {
      spdlog::info("{}: refused: {}", peer_text, *why);
      co_await proto::refuse(stream, proto::error_code::name_invalid, *why);
      co_return;
    }
    auto name = domains_.take(init.subdomain);
    // A generated name may happen to be one a token reserved: draw again.
    for (int draw = 0; init.subdomain.empty() && name.status == domain_pool::result::ok &&
                       draw < 8 && tokens_.reserved_by_other(who, label_of(name.domain));
         ++draw) {
      auto next = domains_.take(init.subdomain);
      domains_.give_back(name.domain);
      name = std::move(next);
    }
    if (init.subdomain.empty() && name.status == domain_pool::result::ok &&
        tokens_.reserved_by_other(who, label_of(name.domain))) {
      domains_.give_back(name.domain);
      spdlog::warn("{}: refused: only reserved generated names were drawn", peer_text);
      co_await proto::refuse(stream, proto::error_code::no_capacity,
                             "no free generated name; ask for a name (--subdomain)");
      co_return;
    }
    if (name.status != domain_pool::result::ok) {
      const auto code =
          name.status == domain_pool::result::name_taken     ? proto::error_code::name_taken
          : name.status == domain_pool::result::name_invalid ? proto::error_code::name_invalid
                                                             : proto::error_code::no_capacity;
      spdlog::info("{}: refused: {}", peer_text, name.error);
      co_await proto::refuse(stream, code, name.error);
      co_return;
    }
    auto listener = ports_.bind_any();
    if (!listener) {
      domains_.give_back(name.domain);
      spdlog::warn("{}: refused: no free public port in {}-{}", peer_text, config_.port_min,
                   config_.port_max);
      co_await proto::refuse(stream, proto::error_code::no_capacity, "no free public port");
      co_return;
    }
    t = std::make_shared<tunnel>(io_, std::move(*listener));
    do t->id = shared::util::random_u64();
    while (t->id == 0 || tunnels_.count(t->id));
    shared::util::fill_random(t->secret);
    if (tls_) {
      // Data connections find the tunnel by its route tag; draw again in the (2^-64) case that
      // its index is taken.
      for (t->route_tag = shared::tls::derive_route_tag(t->secret);
           by_route_.count(route_index(t->route_tag));
           t->route_tag = shared::tls::derive_route_tag(t->secret))
        shared::util::fill_random(t->secret);
      by_route_[route_index(t->route_tag)] = t;
    }
    t->domain = name.domain;
    t->port = t->listener.local_endpoint().port();
    t->kind = init.kind;
    t->slot = free_slots_.back();
    free_slots_.pop_back();
    t->created_unix_ms = unix_ms_now();
    t->leases = std::move(leases);
    tunnels_[t->id] = t;  // registered now, so nothing can take its slot, name or port
    publish(*t);
  }

  proto::domain_message offer;
  offer.tunnel_id = t->id;
  offer.secret = t->secret;
  offer.public_port = t->port;
  offer.heartbeat_interval_s = std::uint16_t(config_.heartbeat_interval.count());
  offer.data_connections = config_.data_connections;
  offer.domain = t->domain;
  offer.public_url = public_url(*t);
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
    if (!reclaimed && t->state == ipc::slot_state::starting) finish_tunnel(t);
    co_return;
  }
  if (t->state == ipc::slot_state::stopping) {  // shut down while we waited for the ACK
    co_await proto::refuse(stream, proto::error_code::shutting_down, "the server is shutting down");
    co_return;
  }

  spdlog::info("{}: {} {} tunnel {} on port {}", peer_text, reclaimed ? "reclaimed" : "opened",
               init.kind == proto::tunnel_kind::tcp ? "tcp" : "http", t->domain, t->port);
  place.release();  // the socket leaves the handshake: shedding must not reach it any more
  attach_control(t, std::move(stream));
  if (!t->worker_pid) start_worker(t);  // a new tunnel, or one whose worker restart is pending
}

void supervisor::attach_control(const tunnel_ptr& t, shared::net::transport stream) {
  t->grace_timer.cancel();
  boost::system::error_code ec;
  t->client_addr = shared::net::to_string(stream.socket().remote_endpoint(ec));
  auto link = std::make_shared<proto::control_link>(std::move(stream), config_.heartbeat_interval,
                                                    config_.heartbeat_timeout);
  const proto::control_link* raw = link.get();
  proto::control_link::hooks hooks;
  hooks.on_frame = [this, weak = std::weak_ptr<tunnel>(t), raw](proto::frame&& f) {
    auto t = weak.lock();
    if (!t) return;
    if (f.header.type != proto::frame_type::error) {
      spdlog::debug("{}: ignoring {} frame on the control connection", t->domain,
                    proto::to_string(f.header.type));
      return;
    }
    // The text is the client's: escaped and capped, and logged at a bounded rate, since a client
    // may reconnect and send another as fast as it likes.
    auto e = proto::decode_error_message(f.payload);
    std::uint64_t suppressed = 0;
    if (peer_error_log_.allow(std::chrono::steady_clock::now(), suppressed))
      spdlog::info("{}: client reported an error: {}{}", t->domain,
                   e ? shared::log::printable(e->message) : "(malformed)",
                   suppressed ? " (" + std::to_string(suppressed) + " earlier ones not logged)"
                              : std::string());
    // The sender of an ERROR closes next (protocol.md): nothing after it is read.
    if (t->control.get() == raw) t->control->close("client reported an error");
  };
  hooks.on_closed = [this, weak = std::weak_ptr<tunnel>(t), raw](const std::string& reason) {
    auto t = weak.lock();
    // A link replaced by a reconnect closes too; only the current one's loss means anything.
    if (!t || t->control.get() != raw) return;
    hold(t, reason);
  };
  link->set_hooks(std::move(hooks));
  auto previous = std::exchange(t->control, link);
  if (previous) previous->close("replaced by a reconnect");
  t->state = ipc::slot_state::active;
  publish(*t);
  link->start();
}

// ---- Data connections -----------------------------------------------------------------------

asio::awaitable<void> supervisor::attach_data(shared::net::transport stream,
                                              proto::data_init_message init,
                                              handshake_place& place) {
  auto t = find_by_id(init.tunnel_id);
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
  co_await deliver_data(t, std::move(stream.socket()), false);
}

// TLS servers: the client named its tunnel in clear by its route tag, which only a holder of
// the secret can compute (a tunnel id, in the table or a log, routes nothing), so strangers
// never reach a worker's TLS handshake slots. Whether the client holds the secret is settled by
// the TLS handshake with the tunnel's worker, which alone knows the key derived from it.
asio::awaitable<void> supervisor::route_data(shared::net::transport stream,
                                             proto::data_route_message route,
                                             handshake_place& place) {
  auto t = find_by_route_tag(route.route_tag);
  if (!t || t->state == ipc::slot_state::stopping) {
    boost::system::error_code ec;
    spdlog::info("{}: data connection refused: unknown route tag",
                 shared::net::to_string(stream.socket().remote_endpoint(ec)));
    co_await proto::refuse(stream, proto::error_code::unknown_tunnel,
                           "no tunnel with this route tag");
    co_return;
  }
  place.release();  // the worker's TLS handshake proves the secret, under its own limits
  co_await deliver_data(t, std::move(stream.socket()), true);
}

asio::awaitable<void> supervisor::deliver_data(tunnel_ptr t, tcp::socket socket, bool tls) {
  if (t->worker_ready && t->channel) {
    co_await hand_over(t, std::move(socket), tls);
    co_return;
  }
  if (t->waiting_data.size() >= max_waiting_data) {
    shared::net::transport clear(std::move(socket));
    co_await proto::refuse(clear, proto::error_code::overloaded,
                           "too many data connections waiting for the tunnel's worker");
    co_return;
  }
  t->waiting_data.push_back({std::move(socket), tls});  // handed over when the worker is ready
}

asio::awaitable<void> supervisor::hand_over(tunnel_ptr t, tcp::socket socket, bool tls) {
  auto channel = t->channel;
  boost::system::error_code ec;
  const auto peer = shared::net::to_string(socket.remote_endpoint(ec));
  if (ec) co_return;
  // "D": the client is authenticated, send DATA_READY; "T": run the TLS (PSK) handshake first.
  const std::string message = (tls ? "T" : "D") + peer;
  if (auto err = co_await ipc::send_message(*channel, message, socket.native_handle())) {
    // The worker is going away; the client sees its data connection close and dials again.
    spdlog::warn("{}: handing a data connection to the worker failed: {}", t->domain,
                 err.message());
  }
  // Our copy closes here; the worker's copy of the connection lives on.
}

// ---- Workers --------------------------------------------------------------------------------

void supervisor::start_worker(const tunnel_ptr& t) {
  auto channel = std::make_shared<ipc::channel_socket>(io_);
  ipc::channel_socket worker_end(io_);
  ipc::make_channel_pair(*channel, worker_end);

  // fd 3: the channel, fd 4: the public listener, fd 5: the table (worker_options' defaults).
  const std::vector<std::string> arguments = {
      "--segment",
      table_->name(),
      "--slot",
      std::to_string(t->slot),
      "--domain",
      t->domain,
      "--log-level",
      config_.log_level,
      "--keepalive-ms",
      std::to_string(config_.heartbeat_interval.count() * 1000),
      "--idle-timeout-ms",
      std::to_string(config_.heartbeat_timeout.count() * 1000),
      "--max-visitors",
      std::to_string(config_.max_visitors),
      "--max-visitors-per-source",
      std::to_string(config_.max_visitors_per_source),
      "--stream-idle-timeout-ms",
      std::to_string(config_.stream_idle_timeout.count() * 1000),
      "--buffer-budget-mb",
      std::to_string(config_.buffer_budget_mb),
  };
  int error = 0;
  // The worker runs under a uid of its own, which may not open the table: it gets a descriptor,
  // maps its own counters page from it and closes it.
  const int table_fd = table_->duplicate_fd();
  const int descriptors[] = {worker_end.native_handle(), t->listener.native_handle(), table_fd};
  const pid_t pid = spawner_->spawn(t->slot, arguments, descriptors, error);
  ::close(table_fd);
  worker_end.close();
  if (!pid) {
    spdlog::error("{}: starting worker {} failed: {}", t->domain, worker_path_,
                  std::strerror(error));
    if (t->control)
      t->control->close_with_error(proto::error_code::internal,
                                   "the server could not start this tunnel's worker");
    stop_tunnel(t, "worker could not start");
    return;
  }
  t->worker_pid = pid;
  t->channel = channel;
  if (tls_) {
    // The worker alone terminates the tunnel's TLS data connections: give it their key (first,
    // so it is there before any connection), never the secret itself.
    std::string key_message = "K";
    for (int shift = 56; shift >= 0; shift -= 8) key_message += char(t->id >> shift);
    const auto key = shared::tls::derive_data_psk(t->secret);
    key_message.append(reinterpret_cast<const char*>(key.data()), key.size());
    spawn(io_, tell_worker(channel, std::move(key_message)), "worker key");
  }
  t->worker_ready = false;
  t->worker_did_work = false;
  t->worker_started = std::chrono::steady_clock::now();
  by_worker_pid_[pid] = t;
  publish(*t);
  spdlog::info("{}: worker {} started", t->domain, pid);
  spawn(io_, worker_channel_loop(t, channel), "worker channel");
}

asio::awaitable<void> supervisor::worker_channel_loop(
    tunnel_ptr t, std::shared_ptr<ipc::channel_socket> channel) {
  // A worker serves the internet: if one goes bad, its noise must not flood the log.
  int warnings_left = 10;
  auto warn = [&](const char* what) {
    if (warnings_left-- > 0)
      spdlog::warn("{}: {} from worker {} ignored{}", t->domain, what, t->worker_pid,
                   warnings_left == 0 ? " (further ones are not logged)" : "");
  };
  for (;;) {
    auto received = co_await ipc::receive_message(*channel);
    if (auto* ec = std::get_if<boost::system::error_code>(&received)) {
      // A malformed message (oversized, bad control data) was consumed whole: skip it and keep
      // listening, or this worker's later reports would go unread. Anything else is the
      // channel's end, and the reaper handles the worker's exit.
      if (*ec != boost::asio::error::invalid_argument) co_return;
      warn("malformed message");
      continue;
    }
    auto& message = std::get<ipc::channel_message>(received);
    if (message.fd >= 0) ::close(message.fd);  // workers never send descriptors
    if (t->channel != channel || message.payload.empty()) continue;
    if (message.payload == "R") {
      t->worker_ready = true;
      if (t->reopen_pending && t->control)
        t->control->send(proto::encode_empty(proto::frame_type::reopen));
      t->reopen_pending = false;
      while (!t->waiting_data.empty()) {
        auto waiting = std::move(t->waiting_data.front());
        t->waiting_data.pop_front();
        co_await hand_over(t, std::move(waiting.socket), waiting.tls);
      }
    } else if (message.payload[0] == 'C') {
      std::uint16_t count = 0;
      const char* first = message.payload.data() + 1;
      const char* last = message.payload.data() + message.payload.size();
      auto [end, error] = std::from_chars(first, last, count);
      if (error != std::errc{} || end != last) {
        warn("malformed report");
        continue;
      }
      t->data_connections = count;
      // It adopted a data connection: from now on its exit is no sign of a broken worker (an
      // outsider's load could cause it, and must not get the tunnel closed).
      t->worker_did_work = true;
      publish(*t);
    } else {
      warn("unknown message");
    }
  }
}

asio::awaitable<void> supervisor::tell_worker(std::shared_ptr<ipc::channel_socket> channel,
                                              std::string message) {
  if (auto ec = co_await ipc::send_message(*channel, message))
    spdlog::warn("message to a worker failed: {}", ec.message());
  OPENSSL_cleanse(message.data(), message.size());
}

asio::awaitable<void> supervisor::reap_loop() {
  for (;;) {
    auto [ec, signal] = co_await child_signals_.async_wait(use_tuple);
    if (ec) co_return;
    (void)signal;
    // One SIGCHLD may stand for several exits: collect them all.
    for (;;) {
      int status = 0;
      const pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      on_worker_exit(pid, status);
    }
  }
}

void supervisor::on_worker_exit(pid_t pid, int status) {
  auto it = by_worker_pid_.find(pid);
  if (it == by_worker_pid_.end()) {
    if (spawner_ && pid == spawner_->pid())
      spdlog::error("worker spawner {} {}: no new worker can start", pid, describe_exit(status));
    return;
  }
  auto t = it->second;
  by_worker_pid_.erase(it);
  t->worker_pid = 0;
  t->worker_ready = false;
  t->data_connections = 0;  // they died with it
  if (t->channel) t->channel->close();
  t->channel.reset();
  const auto lived = std::chrono::steady_clock::now() - t->worker_started;

  if (t->state == ipc::slot_state::stopping || stopping_) {
    spdlog::info("{}: worker {} {}", t->domain, pid, describe_exit(status));
    finish_tunnel(t);
    return;
  }
  spdlog::warn("{}: worker {} {} unexpectedly", t->domain, pid, describe_exit(status));
  // Postfix's rule: back off, and in the end give up, only for a worker that dies before doing
  // any work. One that adopted a data connection may have been killed by visitor load, and
  // that load may hit every restart: counting those would let outsiders close the tunnel.
  t->quick_failures = lived < quick_exit && !t->worker_did_work ? t->quick_failures + 1 : 0;
  const bool fatal = WIFEXITED(status) && WEXITSTATUS(status) == worker_exit_fatal;
  if (fatal || t->quick_failures > max_quick_failures) {
    spdlog::error("{}: worker keeps failing; closing the tunnel", t->domain);
    if (t->control)
      t->control->close_with_error(proto::error_code::internal,
                                   "this tunnel's worker failed on the server");
    stop_tunnel(t, "worker failed");
    return;
  }
  restart_worker(t);
}

void supervisor::restart_worker(const tunnel_ptr& t) {
  ++t->restarts;
  t->reopen_pending = true;
  // Back off when a worker dies right after starting (postfix master's rule).
  const auto delay =
      t->quick_failures == 0
          ? std::chrono::milliseconds(0)
          : std::min(std::chrono::milliseconds(100 << std::min(t->quick_failures, 10u)),
                     std::chrono::milliseconds(5000));
  t->stop_timer.expires_after(delay);
  t->stop_timer.async_wait([this, weak = std::weak_ptr<tunnel>(t)](boost::system::error_code ec) {
    auto t = weak.lock();
    if (ec || !t || t->state == ipc::slot_state::stopping || t->worker_pid) return;
    spdlog::info("{}: restarting worker (restart {})", t->domain, t->restarts);
    start_worker(t);
  });
}

// ---- Tunnel life cycle ----------------------------------------------------------------------

void supervisor::hold(const tunnel_ptr& t, const std::string& reason) {
  if (t->state == ipc::slot_state::stopping) return;
  t->control.reset();
  t->state = ipc::slot_state::held;
  publish(*t);
  spdlog::info("{}: client lost ({}); holding the domain for {} s", t->domain, reason,
               config_.grace_period.count());
  t->grace_timer.expires_after(config_.grace_period);
  t->grace_timer.async_wait([this, weak = std::weak_ptr<tunnel>(t)](boost::system::error_code ec) {
    auto t = weak.lock();
    if (ec || !t || t->state != ipc::slot_state::held) return;
    stop_tunnel(t, "grace period over");
  });
}

void supervisor::stop_tunnel(const tunnel_ptr& t, const std::string& reason) {
  if (t->state == ipc::slot_state::stopping) return;
  spdlog::info("{}: stopping ({})", t->domain, reason);
  t->state = ipc::slot_state::stopping;
  t->grace_timer.cancel();
  t->stop_timer.cancel();
  publish(*t);
  if (t->control) {
    t->control->close_with_error(proto::error_code::shutting_down, "tunnel closed: " + reason);
  }
  if (!t->worker_pid) {
    finish_tunnel(t);
    return;
  }
  signal_worker(*t, SIGTERM);
  t->stop_timer.expires_after(worker_kill_deadline);
  t->stop_timer.async_wait([this, weak = std::weak_ptr<tunnel>(t)](boost::system::error_code ec) {
    auto t = weak.lock();
    if (ec || !t || !t->worker_pid) return;
    spdlog::warn("{}: worker {} ignored SIGTERM; killing it", t->domain, t->worker_pid);
    signal_worker(*t, SIGKILL);
  });
}

// Workers may run under uids of their own: only the spawner may signal them.
void supervisor::signal_worker(const tunnel& t, int signal_number) {
  if (const int error = spawner_->signal(t.slot, signal_number); error && error != ESRCH)
    spdlog::warn("{}: signal {} to worker {} failed: {}", t.domain, signal_number, t.worker_pid,
                 std::strerror(error));
}

void supervisor::finish_tunnel(const tunnel_ptr& t) {
  // Reached only once no worker runs for this tunnel, so nobody writes its slot any more.
  t->state = ipc::slot_state::stopping;
  t->grace_timer.cancel();
  t->stop_timer.cancel();
  // A link still sending its ERROR closes itself once that is out (bounded by its own timer).
  if (t->control && !t->control->closing()) t->control->close("tunnel released");
  t->control.reset();
  t->waiting_data.clear();
  boost::system::error_code ignored;
  t->listener.close(ignored);
  ports_.give_back(t->port);
  domains_.give_back(t->domain);
  table_->clear(t->slot);
  free_slots_.push_back(t->slot);
  t->leases.clear();  // the token's and the address's share come back now
  tunnels_.erase(t->id);
  if (auto route = by_route_.find(route_index(t->route_tag));
      route != by_route_.end() && route->second == t)
    by_route_.erase(route);
  spdlog::info("{}: released (port {}, slot {})", t->domain, t->port, t->slot);
  if (stopping_ && tunnels_.empty()) io_.stop();
}

asio::awaitable<void> supervisor::shutdown() {
  if (stopping_) co_return;
  stopping_ = true;
  boost::system::error_code ignored;
  control_.close(ignored);
  for (auto& [id, t] : std::map(tunnels_)) stop_tunnel(t, "the server is shutting down");
  if (tunnels_.empty()) {
    io_.stop();
    co_return;
  }
  // Workers had their SIGTERM and, past the kill deadline, SIGKILL; this is the last resort.
  asio::steady_timer deadline(io_, worker_kill_deadline + std::chrono::seconds(2));
  co_await deadline.async_wait(use_tuple);
  spdlog::warn("{} tunnel(s) did not finish stopping; exiting anyway", tunnels_.size());
  io_.stop();
}

// ---- Shared table ---------------------------------------------------------------------------

void supervisor::publish(const tunnel& t) {
  ipc::slot_identity identity;
  identity.state = t.state;
  identity.kind = table_kind(t.kind);
  identity.worker_pid = t.worker_pid;
  identity.created_unix_ms = t.created_unix_ms;
  identity.public_port = t.port;
  identity.data_connections = t.data_connections;
  identity.worker_restarts = t.restarts;
  std::strncpy(identity.domain, t.domain.c_str(), sizeof(identity.domain) - 1);
  std::strncpy(identity.client_addr, t.client_addr.c_str(), sizeof(identity.client_addr) - 1);
  table_->write_identity(t.slot, identity);
}

std::string supervisor::public_url(const tunnel& t) const {
  const auto port = std::to_string(t.port);
  if (t.kind == proto::tunnel_kind::http) return "http://" + t.domain + ":" + port;
  std::string host = config_.public_host;
  if (host.empty()) {
    const auto address = asio::ip::make_address(config_.public_bind);
    host = address.is_unspecified() ? config_.base_domain : config_.public_bind;
  }
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return "tcp://" + host + ":" + port;
}

}  // namespace culvert::supervisor
