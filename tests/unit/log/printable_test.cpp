// Unit tests for shared/log/printable: nothing outside printable ASCII gets through, and the
// length is capped. Runs in the unit-test binary.
#include "shared/log/printable.hpp"

#include <catch2/catch.hpp>
#include <string>

using culvert::shared::log::printable;
using culvert::shared::log::unprintable_as;

TEST_CASE("printable escapes terminal control sequences and line breaks") {
  const std::string hostile = "/a\x1b]0;owned\x07\x1b[2J\nGET /forged 200\r\x7f\xff";
  const std::string shown = printable(hostile);
  CHECK(shown == "/a\\x1b]0;owned\\x07\\x1b[2J\\x0aGET /forged 200\\x0d\\x7f\\xff");
  for (const char c : shown) CHECK((c >= 0x20 && c <= 0x7e));
}

TEST_CASE("printable keeps plain text, shows a backslash unambiguously") {
  CHECK(printable("GET /index.html?q=1") == "GET /index.html?q=1");
  CHECK(printable("a\\x1b") == "a\\\\x1b");
  CHECK(printable("") == "");
}

TEST_CASE("printable caps the length") {
  const std::string long_text(500, 'a');
  CHECK(printable(long_text, 10) == "aaaaaaaaaa...");
  CHECK(printable("abc", 3) == "abc");
  CHECK(printable(std::string(1, '\0') + "b", 1) == "\\x00...");
}

TEST_CASE("printable can keep one column per byte") {
  CHECK(printable("a\x1b"
                  "b\n",
                  200, unprintable_as::question_mark) == "a?b?");
  CHECK(printable("a\\b", 200, unprintable_as::question_mark) == "a\\b");
}
