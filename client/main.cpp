// culvert: the developer's CLI (`culvert http 3000`, `culvert tcp HOST:PORT`).
// Thin: parses arguments, sets up logging and signals, runs the client's io_context.
#include <csignal>
#include <iostream>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <spdlog/spdlog.h>

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
  boost::asio::io_context io(1);
  c::client client(io, *parsed.options, std::cout);
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](boost::system::error_code ec, int) {
    if (!ec) client.stop();
  });
  client.start();
  io.run();
  return client.exit_code();
}
