// culvert-worker: started by culvert-supervisor, one per tunnel; not meant to be run by hand.
// Its arguments come from the supervisor alone, so a small parser reads them: a command-line
// library (and the iostreams it brings) would be most of an idle worker's code pages.
#include <spdlog/spdlog.h>
#include <sys/prctl.h>

#include <boost/asio/io_context.hpp>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string_view>

#include "shared/log/log.hpp"
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
  std::uint64_t stream_idle_timeout_ms = 600000;
  bool have_segment = false, have_slot = false, have_domain = false;
  for (int i = 1; i < argc; i += 2) {
    const std::string_view name = argv[i];
    if (name == "--help" || name == "-h") {
      std::fputs(
          "culvert-worker: serves one tunnel's public port; started by culvert-supervisor with\n"
          "  --segment NAME --slot N --domain NAME [--log-level L] [--max-visitors N]\n"
          "  [--keepalive-ms MS] [--idle-timeout-ms MS] [--channel-fd FD] [--listener-fd FD]\n"
          "  [--max-visitors-per-source N] [--stream-idle-timeout-ms MS] [--buffer-budget-mb MB]\n",
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
    } else if (name == "--max-visitors-per-source") {
      ok = parse_number(value, options.max_visitors_per_source) &&
           options.max_visitors_per_source > 0;
    } else if (name == "--stream-idle-timeout-ms") {
      ok = parse_number(value, stream_idle_timeout_ms);
    } else if (name == "--buffer-budget-mb") {
      ok = parse_number(value, options.buffer_budget_mb) && options.buffer_budget_mb > 0 &&
           options.buffer_budget_mb <= (1u << 20);
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
  options.mux.stream_idle_timeout = std::chrono::milliseconds(stream_idle_timeout_ms);
  options.mux.max_streams = options.max_visitors;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  w::worker_options options;
  if (!parse_arguments(argc, argv, options)) return w::exit_fatal;

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
