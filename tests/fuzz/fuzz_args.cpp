// Fuzz target: the supervisor's command-line parser (parse_arguments, CLI11 underneath).
// Input: the arguments, separated by newlines. Checks that it never throws, that exit codes are
// 0 or 2, and that a returned config passes validate() and round-trips through to_toml.
// Inputs with a --config argument are skipped: the parser would open whatever path they spell.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "supervisor/config.hpp"

namespace sv = culvert::supervisor;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> args{"culvert-supervisor"};
  for (std::size_t begin = 0; begin <= text.size();) {
    std::size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    std::string arg(text.substr(begin, end - begin));
    if (arg.find('\0') != std::string::npos) return -1;  // argv strings cannot hold NUL
    if (arg.rfind("--config", 0) == 0) return -1;
    args.push_back(std::move(arg));
    begin = end + 1;
    if (args.size() > 64) break;
  }
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());

  const sv::parse_result result = sv::parse_arguments(int(argv.size()), argv.data());
  if (!result.cfg) {
    if (result.exit_code != 0 && result.exit_code != 2) std::abort();
    if (result.output.empty()) std::abort();
    return 0;
  }
  try {
    sv::validate(*result.cfg);
  } catch (const sv::config_error& e) {
    std::fprintf(stderr, "fuzz_args: parse_arguments returned an invalid config: %s\n", e.what());
    std::abort();
  }
  sv::config again;
  try {
    again = sv::load_toml(sv::to_toml(*result.cfg), "printed.toml");
  } catch (const sv::config_error& e) {
    std::fprintf(stderr, "fuzz_args: to_toml output rejected: %s\n", e.what());
    std::abort();
  }
  if (!(again == *result.cfg)) std::abort();
  return 0;
}
