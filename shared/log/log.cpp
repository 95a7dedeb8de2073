// spdlog default logger: "<time> <role>[<pid>] <level> <message>" on stderr.
#include "shared/log/log.hpp"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

namespace culvert::shared::log {

bool init(std::string_view role, std::string_view level) {
  auto logger = spdlog::stderr_logger_st(std::string(role) + "-" + std::to_string(::getpid()));
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e " + std::string(role) + "[%P] %l %v");
  spdlog::set_default_logger(logger);
  logger->flush_on(spdlog::level::trace);
  auto parsed = spdlog::level::from_str(std::string(level));
  bool known = parsed != spdlog::level::off || level == "off";
  spdlog::set_level(known ? parsed : spdlog::level::info);
  return known;
}

}  // namespace culvert::shared::log
