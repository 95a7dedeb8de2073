// culvert-worker: started by culvert-supervisor, one per tunnel; not meant to be run by hand.
#include <spdlog/spdlog.h>
#include <sys/prctl.h>

#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>

#include "shared/log/log.hpp"
#include "worker/worker.hpp"

int main(int argc, char** argv) {
  namespace w = culvert::worker;
  w::worker_options options;
  unsigned keepalive_ms = 5000, idle_timeout_ms = 30000;
  CLI::App app{"culvert-worker: serves one tunnel's public port (started by culvert-supervisor)"};
  app.add_option("--channel-fd", options.channel_fd, "supervisor channel descriptor");
  app.add_option("--listener-fd", options.listener_fd, "public listener descriptor");
  app.add_option("--segment", options.segment, "shared-memory table")->required();
  app.add_option("--slot", options.slot, "this tunnel's slot in the table")->required();
  app.add_option("--domain", options.domain, "this tunnel's domain")->required();
  app.add_option("--log-level", options.log_level, "log level");
  app.add_option("--max-visitors", options.max_visitors, "open visitor connections at most");
  app.add_option("--keepalive-ms", keepalive_ms, "data connection keepalive interval");
  app.add_option("--idle-timeout-ms", idle_timeout_ms, "silence that ends a data connection");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return w::exit_fatal;
  }
  options.mux.keepalive_interval = std::chrono::milliseconds(keepalive_ms);
  options.mux.idle_timeout = std::chrono::milliseconds(idle_timeout_ms);
  options.mux.max_streams = options.max_visitors;

  // If the supervisor dies without telling us, stop too (the channel's EOF is the other signal).
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  std::signal(SIGPIPE, SIG_IGN);
  culvert::shared::log::init("worker " + options.domain, options.log_level);
  try {
    boost::asio::io_context io(1);
    w::worker worker(io, options);
    worker.start();
    io.run();
    // Leave without running local destructors: the io_context would destroy its pending
    // coroutine frames after the objects they point into. The kernel closes every descriptor.
    spdlog::default_logger()->flush();
    std::exit(w::exit_ok);
  } catch (const std::exception& e) {
    spdlog::critical("fatal: {}", e.what());
    return w::exit_fatal;
  }
}
