// Fuzz target: the supervisor's TOML configuration loader (load_toml, then validate and to_toml).
// Input: the text of a config file. Checks that bad input only ever raises config_error and that
// every config load_toml accepts survives a round trip: load_toml(to_toml(cfg)) == cfg.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "supervisor/config.hpp"

namespace sv = culvert::supervisor;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  sv::config cfg;
  try {
    cfg = sv::load_toml(text, "fuzz.toml");
  } catch (const sv::config_error& e) {
    if (std::string_view(e.what()).empty()) std::abort();
    return 0;
  }
  // Anything else escaping (std::exception from toml++, std::out_of_range, ...) is a finding:
  // libFuzzer reports the uncaught exception as a crash.
  try {
    sv::validate(cfg);
  } catch (const sv::config_error&) {
  }
  const std::string printed = sv::to_toml(cfg);
  sv::config again;
  try {
    again = sv::load_toml(printed, "printed.toml");
  } catch (const sv::config_error& e) {
    std::fprintf(stderr, "fuzz_config: to_toml output rejected: %s\n%s\n", e.what(),
                 printed.c_str());
    std::abort();
  }
  if (!(again == cfg)) {
    std::fprintf(stderr, "fuzz_config: round trip changed the config:\n%s\n", printed.c_str());
    std::abort();
  }
  return 0;
}
