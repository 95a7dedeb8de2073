// culvert: the developer's CLI (`culvert http 3000`, `culvert tcp HOST:PORT`).
// Thin: parses arguments, sets up logging and signals, runs the client's io_context.
#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <optional>

#include "client/client.hpp"
#include "shared/log/log.hpp"

int main(int argc, char** argv) {
  namespace c = culvert::client;
  auto parsed = c::parse_client_arguments(argc, argv);
  if (!parsed.options) {
    (parsed.exit_code == c::exit_ok ? std::cout : std::cerr) << parsed.output;
    return parsed.exit_code;
  }
  std::signal(SIGPIPE, SIG_IGN);
  culvert::shared::log::init("client", parsed.options->log_level);
  for (const auto& warning : parsed.warnings) std::cerr << "culvert: WARNING: " << warning << "\n";
  if (parsed.options->insecure)
    std::cerr << "culvert: WARNING: --insecure: the server's certificate is NOT checked; anyone on "
                 "the path can impersonate the server and read or change this tunnel's traffic\n";
  boost::asio::io_context io(1);
  std::optional<c::client> maybe_client;
  try {
    maybe_client.emplace(io, *parsed.options, std::cout);
  } catch (const std::exception& e) {  // unreadable --ca file and the like
    std::cerr << "culvert: " << e.what() << "\n";
    return c::exit_usage;
  }
  auto& client = *maybe_client;
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](boost::system::error_code ec, int) {
    if (!ec) client.stop();
  });
  client.start();
  io.run();
  // Leave without running local destructors: the io_context would destroy its pending coroutine
  // frames after the client they point into. The kernel closes every descriptor.
  std::cout.flush();
  std::exit(client.exit_code());
}
