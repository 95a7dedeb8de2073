// culvert-supervisor: the daemon that hands out domains and starts one worker per tunnel.
// Thin: parses the configuration, sets up logging, runs the supervisor's io_context.
#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <csignal>
#include <cstdio>
#include <exception>
#include <iostream>

#include "shared/log/log.hpp"
#include "supervisor/config.hpp"
#include "supervisor/supervisor.hpp"

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
