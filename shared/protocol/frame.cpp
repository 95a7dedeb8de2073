// Frame header codec: the table of what each frame type allows (flags, stream id, sizes).
#include "shared/protocol/frame.hpp"

#include <optional>

namespace culvert::shared::protocol {
namespace {

struct type_rules {
  std::uint8_t allowed_flags;
  bool needs_stream;
  std::optional<std::uint32_t> fixed_size;
  std::uint32_t max_size;
};

std::optional<type_rules> rules_for(std::uint8_t type) {
  switch (static_cast<frame_type>(type)) {
    case frame_type::init:
      return type_rules{0, false, {}, 512};
    case frame_type::domain:
      return type_rules{0, false, {}, 1024};
    case frame_type::ack:
      return type_rules{0, false, 0, 0};
    case frame_type::error:
      return type_rules{0, false, {}, 1024};
    case frame_type::ping:
      return type_rules{flags::ack, false, 8, 8};
    case frame_type::data_init:
      return type_rules{0, false, 42, 42};
    case frame_type::data_ready:
      return type_rules{0, false, 0, 0};
    case frame_type::reopen:
      return type_rules{0, false, 0, 0};
    case frame_type::data_route:
      return type_rules{0, false, 34, 34};
    case frame_type::open:
      return type_rules{0, true, {}, 128};
    case frame_type::data:
      return type_rules{flags::fin, true, {}, max_data_payload};
    case frame_type::window:
      return type_rules{0, true, 4, 4};
    case frame_type::reset:
      return type_rules{0, true, 4, 4};
  }
  return std::nullopt;
}

}  // namespace

std::variant<frame_header, decode_error> decode_header(
    std::span<const std::uint8_t, header_size> bytes) {
  frame_header h;
  h.length = load_u32(bytes.data());
  const std::uint8_t type = bytes[4];
  h.flags = bytes[5];
  h.stream_id = load_u32(bytes.data() + 6);

  const auto rules = rules_for(type);
  if (!rules) return decode_error::unknown_type;
  h.type = static_cast<frame_type>(type);
  if (h.flags & ~rules->allowed_flags) return decode_error::bad_flags;
  if (rules->needs_stream && h.stream_id == 0) return decode_error::stream_id_required;
  if (!rules->needs_stream && h.stream_id != 0) return decode_error::stream_id_forbidden;
  if (rules->fixed_size && h.length != *rules->fixed_size) return decode_error::bad_fixed_size;
  if (h.length > rules->max_size) return decode_error::too_long;
  return h;
}

void encode_header(const frame_header& h, std::span<std::uint8_t, header_size> out) {
  store_u32(out.data(), h.length);
  out[4] = static_cast<std::uint8_t>(h.type);
  out[5] = h.flags;
  store_u32(out.data() + 6, h.stream_id);
}

std::array<std::uint8_t, header_size> encode_header(const frame_header& h) {
  std::array<std::uint8_t, header_size> out;
  encode_header(h, std::span<std::uint8_t, header_size>(out));
  return out;
}

std::string_view to_string(decode_error e) {
  switch (e) {
    case decode_error::unknown_type:
      return "unknown frame type";
    case decode_error::bad_flags:
      return "unknown flags set";
    case decode_error::too_long:
      return "frame longer than the maximum for its type";
    case decode_error::bad_fixed_size:
      return "frame of the wrong fixed size";
    case decode_error::stream_id_required:
      return "stream id 0 on a stream frame";
    case decode_error::stream_id_forbidden:
      return "stream id on a connection frame";
  }
  return "unknown decode error";
}

std::string_view to_string(frame_type t) {
  switch (t) {
    case frame_type::init:
      return "INIT";
    case frame_type::domain:
      return "DOMAIN";
    case frame_type::ack:
      return "ACK";
    case frame_type::error:
      return "ERROR";
    case frame_type::ping:
      return "PING";
    case frame_type::data_init:
      return "DATA_INIT";
    case frame_type::data_ready:
      return "DATA_READY";
    case frame_type::reopen:
      return "REOPEN";
    case frame_type::data_route:
      return "DATA_ROUTE";
    case frame_type::open:
      return "OPEN";
    case frame_type::data:
      return "DATA";
    case frame_type::window:
      return "WINDOW";
    case frame_type::reset:
      return "RESET";
  }
  return "?";
}

}  // namespace culvert::shared::protocol
