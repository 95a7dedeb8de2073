// Encoding of the supervisor <-> worker channel messages (worker_channel.hpp, architecture.md 5).
#include "shared/ipc/worker_channel.hpp"

#include <charconv>
#include <cstring>

#include "shared/ipc/fd_channel.hpp"

namespace culvert::shared::ipc::worker_channel {

namespace {
constexpr std::size_t data_key_length = 1 + 8 + data_key_size;
static_assert(data_key_length <= max_channel_message);
constexpr std::size_t max_peer_length = max_channel_message - 1;

char first(std::string_view payload) {
  return payload.empty() ? '\0' : payload.front();
}
}  // namespace

std::string encode(const data_key& k) {
  std::string message(1, char(kind::data_key));
  for (int shift = 56; shift >= 0; shift -= 8) message += char(k.tunnel_id >> shift);
  message.append(reinterpret_cast<const char*>(k.key.data()), k.key.size());
  return message;
}

std::string encode(const data_connection& c) {
  const char k = char(c.tls ? kind::tls_data_connection : kind::data_connection);
  return k + c.peer.substr(0, max_peer_length);
}

std::string encode(const ready&) {
  return std::string(1, char(kind::ready));
}

std::string encode(const data_connection_count& c) {
  return char(kind::data_connections) + std::to_string(c.count);
}

std::optional<to_worker> decode_to_worker(std::string_view payload, bool has_fd) {
  switch (kind(first(payload))) {
    case kind::data_key: {
      if (has_fd || payload.size() != data_key_length) return std::nullopt;
      data_key k;
      for (std::size_t i = 1; i <= 8; ++i)
        k.tunnel_id = k.tunnel_id << 8 | std::uint8_t(payload[i]);
      std::memcpy(k.key.data(), payload.data() + 9, k.key.size());
      return k;
    }
    case kind::data_connection:
    case kind::tls_data_connection:
      if (!has_fd) return std::nullopt;
      return data_connection{kind(payload[0]) == kind::tls_data_connection,
                             std::string(payload.substr(1))};
    default:
      return std::nullopt;
  }
}

std::optional<to_supervisor> decode_to_supervisor(std::string_view payload, bool has_fd) {
  if (has_fd) return std::nullopt;  // workers never send descriptors
  switch (kind(first(payload))) {
    case kind::ready:
      if (payload.size() != 1) return std::nullopt;
      return ready{};
    case kind::data_connections: {
      data_connection_count c;
      const char* begin = payload.data() + 1;
      const char* end = payload.data() + payload.size();
      auto [stop, error] = std::from_chars(begin, end, c.count);
      if (begin == end || error != std::errc{} || stop != end) return std::nullopt;
      return c;
    }
    default:
      return std::nullopt;
  }
}

bool is_to_supervisor_kind(std::string_view payload) {
  const auto k = kind(first(payload));
  return k == kind::ready || k == kind::data_connections;
}

}  // namespace culvert::shared::ipc::worker_channel
