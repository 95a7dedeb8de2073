// See printable.hpp.
#include "shared/log/printable.hpp"

namespace culvert::shared::log {

std::string printable(std::string_view text, std::size_t limit, unprintable_as mode) {
  static constexpr char hex[] = "0123456789abcdef";
  const std::string_view shown = text.substr(0, limit);
  std::string out;
  out.reserve(shown.size() + 3);
  for (const char c : shown) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte <= 0x7e && !(byte == '\\' && mode == unprintable_as::hex_escape)) {
      out += c;
    } else if (mode == unprintable_as::question_mark) {
      out += '?';
    } else if (byte == '\\') {
      out += "\\\\";
    } else {
      out += "\\x";
      out += hex[byte >> 4];
      out += hex[byte & 0xf];
    }
  }
  if (text.size() > limit) out += "...";
  return out;
}

}  // namespace culvert::shared::log
