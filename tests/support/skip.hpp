// Skipping a unit test that cannot run here (one that needs root, say), so that ctest shows it as
// skipped, never as passed. Under ctest (tests/CMakeLists.txt sets CULVERT_SKIP_EXIT and
// SKIP_RETURN_CODE 77) each test case runs in a process of its own, which exits with 77; run by
// hand, the binary warns and the test case returns, so the other test cases still run.
#pragma once

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <iostream>
#include <string>

namespace culvert::tests {

inline constexpr int skip_exit_code = 77;  // ctest's SKIP_RETURN_CODE for every test

// Use as `return skip("why");` at the top of a TEST_CASE, before it creates anything (an exit
// runs no destructors: a segment or a file made before would be left behind).
inline void skip(const std::string& reason) {
  if (std::getenv("CULVERT_SKIP_EXIT") != nullptr) {
    std::cout << "SKIP: " << reason << std::endl;
    std::exit(skip_exit_code);
  }
  WARN("SKIP: " << reason);
}

inline bool running_as_root() {
  return ::geteuid() == 0;
}

}  // namespace culvert::tests
