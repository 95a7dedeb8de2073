// culvert-worker: started by culvert-supervisor, one per tunnel; not meant to be run by hand.
// Its arguments come from the supervisor alone, so a small parser reads them: a command-line
// library (and the iostreams it brings) would be most of an idle worker's code pages.
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#if CULVERT_WITH_TLS
#include <openssl/ssl.h>
#endif
#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string_view>

#include "shared/log/log.hpp"
#include "shared/net/mux_session.hpp"
#include "shared/util/descriptor_limit.hpp"
#include "worker/sandbox.hpp"
#include "worker/worker.hpp"

namespace {

namespace w = culvert::worker;
namespace net = culvert::shared::net;

template <typename Number>
bool parse_number(std::string_view text, Number& out) {
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc{} && end == text.data() + text.size();
}

// Fills `options` from "--name value" pairs; prints the problem and returns false on bad input.
bool parse_arguments(int argc, char** argv, w::worker_options& options) {
  // The compiled keepalive defaults, unless the supervisor passes its heartbeat settings.
  auto keepalive_ms = unsigned(net::default_keepalive_interval.count());
  auto idle_timeout_ms = unsigned(net::default_idle_timeout.count());
  std::uint64_t stream_idle_timeout_ms = 600000;
  bool have_segment = false, have_slot = false, have_domain = false;
  for (int i = 1; i < argc; i += 2) {
    const std::string_view name = argv[i];
    if (name == "--help" || name == "-h") {
      std::fputs(
          "culvert-worker: serves one tunnel's public port; started by culvert-supervisor with\n"
          "  --segment NAME --slot N --domain NAME [--log-level L] [--max-visitors N]\n"
          "  [--keepalive-ms MS] [--idle-timeout-ms MS] [--channel-fd FD] [--listener-fd FD]\n"
          "  [--table-fd FD] [--max-visitors-per-source N] [--stream-idle-timeout-ms MS]\n"
          "  [--buffer-budget-mb MB]\n",
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
    } else if (name == "--table-fd") {
      ok = parse_number(value, options.table_fd);
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

// `culvert-worker --check-sandbox`: enters the sandbox and tries what a compromised worker would
// (exec a shell); the sandbox must kill it with SIGSYS. Exit 1 if the exec was only refused,
// 77 when this build has no sandbox (sanitizers).
int check_sandbox() {
  if (!w::enter_sandbox()) return 77;
  char shell[] = "/bin/sh";
  char* const no_arguments[] = {shell, nullptr};
  ::execve(shell, no_arguments, nullptr);
  return 1;
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
  // Before anything else: exec made us dumpable again, readable by every process of our uid.
  if (const int failed = w::make_undumpable()) {
    std::fprintf(stderr, "culvert-worker: prctl(PR_SET_DUMPABLE, 0): %s\n", std::strerror(failed));
    return w::exit_fatal;
  }
  if (argc == 2 && std::string_view(argv[1]) == "--check-sandbox") return check_sandbox();
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
#if CULVERT_WITH_TLS
    // The data key arrives later; OpenSSL reads its configuration file on first use, which the
    // sandbox would refuse.
    if (OPENSSL_init_ssl(OPENSSL_INIT_LOAD_CONFIG, nullptr) != 1)
      throw std::runtime_error("OPENSSL_init_ssl failed");
#endif
    if (w::enter_sandbox(worker.table_page()))
      spdlog::debug("sandbox: seccomp allow-list installed");
    else
      spdlog::info("sandbox: no seccomp allow-list in a sanitizer build");
    // Returns once the worker has ended everything it started (drain_and_exit, stop_now).
    io.run();
    spdlog::default_logger()->flush();
    return worker.exit_code();
  } catch (const std::exception& e) {
    spdlog::critical("fatal: {}", e.what());
    return w::exit_fatal;
  }
}
