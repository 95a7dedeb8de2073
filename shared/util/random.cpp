// Secret randomness (the kernel's CSPRNG) and constant-time comparison.
#include "shared/util/random.hpp"

#include <sys/random.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace culvert::shared::util {

void fill_random(std::span<std::uint8_t> out) {
  // getrandom(2): the kernel's CSPRNG, which also seeds OpenSSL's DRBGs. Asking it directly keeps
  // a clear-text supervisor from initialising OpenSSL (its DRBG and providers) at all.
  std::size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::getrandom(out.data() + done, out.size() - done, 0);
    if (n > 0) {
      done += std::size_t(n);
    } else if (errno != EINTR) {
      std::fprintf(stderr, "getrandom failed: %s\n", std::strerror(errno));
      std::abort();  // never hand out a predictable secret
    }
  }
}

std::uint64_t random_u64() {
  std::uint8_t b[8];
  fill_random(b);
  std::uint64_t v = 0;
  for (auto x : b) v = v << 8 | x;
  return v;
}

bool equal_constant_time(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b) {
  if (a.size() != b.size()) return false;  // lengths are not secret (fixed-size secrets)
  volatile std::uint8_t diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff = diff | (a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace culvert::shared::util
