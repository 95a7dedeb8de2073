// getrlimit/setrlimit(RLIMIT_NOFILE); called once at start by the supervisor and each worker.
#include "shared/util/descriptor_limit.hpp"

#include <sys/resource.h>

#include <cerrno>

namespace culvert::shared::util {

descriptor_limit raise_descriptor_limit() {
  descriptor_limit result;
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    result.error = errno;
    return result;
  }
  result.before = result.now = limit.rlim_cur;
  if (limit.rlim_cur >= limit.rlim_max) return result;
  limit.rlim_cur = limit.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) {
    result.error = errno;
    return result;
  }
  result.now = limit.rlim_cur;
  return result;
}

std::uint64_t visitors_that_fit(std::uint64_t limit) {
  return limit > worker_reserved_descriptors ? limit - worker_reserved_descriptors : 0;
}

}  // namespace culvert::shared::util
