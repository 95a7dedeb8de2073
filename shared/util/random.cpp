// Secret randomness (OpenSSL DRBG) and constant-time comparison.
#include "shared/util/random.hpp"

#include <openssl/err.h>
#include <openssl/rand.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace culvert::shared::util {

void fill_random(std::span<std::uint8_t> out) {
  // OpenSSL's private DRBG, seeded from the kernel (getrandom), kept apart from public nonces.
  if (RAND_priv_bytes(out.data(), static_cast<int>(out.size())) != 1) {
    std::fprintf(stderr, "RAND_priv_bytes failed: %s\n",
                 ERR_error_string(ERR_get_error(), nullptr));
    std::abort();  // never hand out a predictable secret
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
