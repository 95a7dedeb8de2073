// Text from the network made safe for a terminal or a log line: every byte outside printable
// ASCII becomes a visible escape, and the length is capped. Used wherever a peer's bytes (request
// targets, ERROR texts, names, tokens) reach a log, a terminal or a reply.
// Invariant: the result holds only bytes 0x20-0x7e, so no escape sequence, CR or LF gets through.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace culvert::shared::log {

enum class unprintable_as {
  hex_escape,    // "\x1b": shows what was sent (logs)
  question_mark  // "?": keeps one column per byte (tables)
};

// At most `limit` input bytes are shown; a longer input ends in "...". A backslash is shown as
// "\\" in hex_escape mode so an escape in the output always means a byte that was escaped.
std::string printable(std::string_view text, std::size_t limit = 200,
                      unprintable_as mode = unprintable_as::hex_escape);

}  // namespace culvert::shared::log
