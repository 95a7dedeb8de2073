// Secrets and ids from the kernel's CSPRNG, and a comparison that takes the same time whatever
// bytes differ (for secrets and tokens).
#pragma once

#include <cstdint>
#include <span>

namespace culvert::shared::util {

void fill_random(std::span<std::uint8_t> out);  // getrandom(2); aborts if it fails
std::uint64_t random_u64();
bool equal_constant_time(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b);

}  // namespace culvert::shared::util
