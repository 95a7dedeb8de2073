// culvert: the developer's CLI (`culvert http 3000`, `culvert tcp HOST:PORT`).
// Thin: parses arguments, sets up logging and signals, runs the client's io_context.
// Invariant: main returns (no std::exit), and the client is destroyed before the io_context it
// uses, after run() has returned: for lack of work once the client stopped everything it started,
// or because its forced stage stopped the loop (then the frames left in it go first).
#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <csignal>
#include <iostream>
#include <optional>

#include "client/client.hpp"
#include "shared/log/log.hpp"

namespace {
// An io_context whose queued handlers can be destroyed on demand, before the objects they point
// into (execution_context::shutdown is protected; ~io_context calls it again, which is harmless).
class event_loop : public boost::asio::io_context {
 public:
  using io_context::io_context;
  using io_context::shutdown;
};
}  // namespace

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
  event_loop io(1);
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
  client.start([&signals] { signals.cancel(); });  // also when a refusal ends the client
  io.run();
  // Forced stage: coroutine frames that point into the client still wait in the io_context.
  if (client.forced()) io.shutdown();
  std::cout.flush();
  return client.exit_code();
}
