// Logging setup: every process logs through spdlog's default logger to stderr, each line naming
// the role, the pid and (for workers) the domain. Call after fork, never before.
#pragma once

#include <string_view>

namespace culvert::shared::log {

// Returns false (and logs at info) if level is unknown.
bool init(std::string_view role, std::string_view level);

}  // namespace culvert::shared::log
