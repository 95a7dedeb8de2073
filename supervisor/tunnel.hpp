// One tunnel as the supervisor keeps it: identity, secret, listener, control link, worker and
// life-cycle state (starting -> active <-> held -> stopping -> released). Supervisor only.
// Invariant: every field is touched on the supervisor's one io_context thread.
#pragma once

#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "shared/ipc/fd_channel.hpp"
#include "shared/ipc/tunnel_table.hpp"
#include "shared/protocol/control_link.hpp"
#include "shared/protocol/messages.hpp"
#include "supervisor/usage_counter.hpp"

namespace culvert::supervisor {

struct tunnel {
  tunnel(boost::asio::io_context& io, boost::asio::ip::tcp::acceptor l)
      : listener(std::move(l)), grace_timer(io), stop_timer(io) {}

  std::uint64_t id = 0;
  shared::protocol::secret_bytes secret{};
  shared::protocol::route_tag_bytes route_tag{};  // TLS servers: what DATA_ROUTE must carry
  std::string domain;
  std::uint16_t port = 0;
  shared::protocol::tunnel_kind kind = shared::protocol::tunnel_kind::http;
  std::uint32_t slot = 0;
  std::int64_t created_unix_ms = 0;
  shared::ipc::slot_state state = shared::ipc::slot_state::starting;

  // Kept open by the supervisor so that a restarted worker inherits the same socket.
  boost::asio::ip::tcp::acceptor listener;
  std::shared_ptr<shared::protocol::control_link> control;  // empty while held
  std::string client_addr;
  boost::asio::steady_timer grace_timer;
  boost::asio::steady_timer stop_timer;  // restart back-off, or SIGKILL deadline while stopping

  pid_t worker_pid = 0;
  std::shared_ptr<shared::ipc::channel_socket> channel;
  bool worker_ready = false;
  struct pending_data {
    boost::asio::ip::tcp::socket socket;
    bool tls;  // routed by DATA_ROUTE: the worker runs the TLS handshake
  };
  std::deque<pending_data> waiting_data;  // arrived while no worker was ready
  std::uint32_t restarts = 0;
  // Consecutive exits soon after start before doing any work (for back-off and giving up).
  std::uint32_t quick_failures = 0;
  std::chrono::steady_clock::time_point worker_started;
  bool worker_did_work = false;  // the current worker has reported a data connection
  std::uint16_t data_connections = 0;
  bool reopen_pending = false;  // tell the client to re-open data connections once the worker is up
  std::vector<usage_counter::lease> leases;  // its share of the per-token and per-address limits
};

using tunnel_ptr = std::shared_ptr<tunnel>;

}  // namespace culvert::supervisor
