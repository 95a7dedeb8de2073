// culvert-worker: started by culvert-supervisor, one per tunnel; not meant to be run by hand.
// Its arguments come from the supervisor alone, so a small parser reads them: a command-line
// library (and the iostreams it brings) would be most of an idle worker's code pages.
#include <spdlog/spdlog.h>
#include <sys/prctl.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string_view>

#include "shared/log/log.hpp"
#include "shared/util/descriptor_limit.hpp"
#include "worker/worker.hpp"

namespace {

namespace w = culvert::worker;

template <typename Number>
bool parse_number(std::string_view text, Number& out) {
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc{} && end == text.data() + text.size();
}

// Fills `options` from "--name value" pairs; prints the problem and returns false on bad input.
bool parse_arguments(int argc, char** argv, w::worker_options& options) {
  unsigned keepalive_ms = 5000, idle_timeout_ms = 30000;
  bool have_segment = false, have_slot = false, have_domain = false;
  for (int i = 1; i < argc; i += 2) {
    const std::string_view name = argv[i];
    if (name == "--help" || name == "-h") {
      std::fputs(
          "culvert-worker: serves one tunnel's public port; started by culvert-supervisor with\n"
          "  --segment NAME --slot N --domain NAME [--log-level L] [--max-visitors N]\n"
          "  [--keepalive-ms MS] [--idle-timeout-ms MS] [--channel-fd FD] [--listener-fd FD]\n",
          stdout);
      std::exit(w::exit_ok);
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "culvert-worker: %s needs a value\n", argv[i]);
      return false;
    }
    const std::string_view value = argv[i + 1];
    bool ok = true;
    if (name == "--segment") {
      options.segment = value, have_segment = true;
    } else if (name == "--slot") {
      ok = parse_number(value, options.slot), have_slot = true;
    } else if (name == "--domain") {
      options.domain = value, have_domain = true;
    } else if (name == "--log-level") {
      options.log_level = value;
    } else if (name == "--max-visitors") {
      ok = parse_number(value, options.max_visitors);
    } else if (name == "--keepalive-ms") {
      ok = parse_number(value, keepalive_ms);
    } else if (name == "--idle-timeout-ms") {
      ok = parse_number(value, idle_timeout_ms);
    } else if (name == "--channel-fd") {
      ok = parse_number(value, options.channel_fd);
    } else if (name == "--listener-fd") {
      ok = parse_number(value, options.listener_fd);
    } else {
      std::fprintf(stderr, "culvert-worker: unknown option %s (see --help)\n", argv[i]);
      return false;
    }
    if (!ok) {
      std::fprintf(stderr, "culvert-worker: %s: not a number: %s\n", argv[i], argv[i + 1]);
      return false;
    }
  }
  if (!have_segment || !have_slot || !have_domain) {
    std::fputs("culvert-worker: --segment, --slot and --domain are required (see --help)\n",
               stderr);
    return false;
  }
  options.mux.keepalive_interval = std::chrono::milliseconds(keepalive_ms);
  options.mux.idle_timeout = std::chrono::milliseconds(idle_timeout_ms);
  options.mux.max_streams = options.max_visitors;
  return true;
}

// The supervisor raised the limit and capped max_visitors before starting us; a worker started
// under a lower limit (by hand, or a wrapper) still keeps room for its data connections.
void fit_descriptor_limit(w::worker_options& options) {
  namespace util = culvert::shared::util;
  const auto limit = util::raise_descriptor_limit();
  if (limit.error)
    spdlog::warn("raising the descriptor limit (RLIMIT_NOFILE) to its hard limit: {}",
                 std::strerror(limit.error));
  const auto fit = std::max<std::uint64_t>(1, util::visitors_that_fit(limit.now));
  if (options.max_visitors > fit) {
    spdlog::warn("max_visitors {} capped to {}: the descriptor limit is {}", options.max_visitors,
                 fit, limit.now);
    options.max_visitors = fit;
    options.mux.max_streams = fit;
  }
}

}  // namespace

int main(int argc, char** argv) {
  w::worker_options options;
  if (!parse_arguments(argc, argv, options)) return w::exit_fatal;

  // If the supervisor dies without telling us, stop too (the channel's EOF is the other signal).
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  std::signal(SIGPIPE, SIG_IGN);
  culvert::shared::log::init("worker " + options.domain, options.log_level);
  fit_descriptor_limit(options);
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
