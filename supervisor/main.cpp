// culvert-supervisor: the daemon that hands out domains and starts one worker per tunnel.
// Thin: parses the configuration, sets up logging, runs the supervisor's io_context.
#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iostream>

#include "shared/log/log.hpp"
#include "shared/util/descriptor_limit.hpp"
#include "supervisor/config.hpp"
#include "supervisor/supervisor.hpp"

namespace {

// Raises the soft descriptor limit to the hard one (workers inherit it) and caps max_visitors to
// what a worker can then hold: a worker out of descriptors cannot even take a data connection
// handed to it. False if the limit leaves no room for a single visitor.
bool fit_descriptor_limit(culvert::supervisor::config& cfg) {
  namespace util = culvert::shared::util;
  const auto limit = util::raise_descriptor_limit();
  if (limit.error)
    spdlog::warn("raising the descriptor limit (RLIMIT_NOFILE) to its hard limit: {}; keeping {}",
                 std::strerror(limit.error), limit.now);
  else if (limit.now != limit.before)
    spdlog::info("descriptor limit raised from {} to {} (the hard limit); workers inherit it",
                 limit.before, limit.now);
  const auto fit = util::visitors_that_fit(limit.now);
  if (fit == 0) {
    spdlog::critical(
        "the descriptor limit {} leaves no room for visitors: a worker keeps {} for itself; "
        "raise it (LimitNOFILE=, ulimit -n)",
        limit.now, util::worker_reserved_descriptors);
    return false;
  }
  if (cfg.max_visitors > fit) {
    spdlog::warn(
        "max_visitors {} capped to {}: the descriptor limit is {} and a worker keeps {} for "
        "itself; raise it (LimitNOFILE=, ulimit -n) for more",
        cfg.max_visitors, fit, limit.now, util::worker_reserved_descriptors);
    cfg.max_visitors = std::uint32_t(fit);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  namespace sv = culvert::supervisor;
  auto parsed = sv::parse_arguments(argc, argv);
  if (!parsed.cfg) {
    (parsed.exit_code == 0 ? std::cout : std::cerr) << parsed.output;
    return parsed.exit_code;
  }
  std::signal(SIGPIPE, SIG_IGN);  // a vanished peer is an error code, not a death
  culvert::shared::log::init("supervisor", parsed.cfg->log_level);
  for (const auto& warning : parsed.warnings) spdlog::warn("{}", warning);
  if (!fit_descriptor_limit(*parsed.cfg)) return 1;
  try {
    boost::asio::io_context io(1);
    sv::supervisor supervisor(io, *parsed.cfg);
    supervisor.start();
    io.run();
  } catch (const std::exception& e) {
    spdlog::critical("fatal: {}", e.what());
    return 1;
  }
  spdlog::info("stopped");
  return 0;
}
