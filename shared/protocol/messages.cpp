// Handshake payload codecs: a writer that appends big-endian fields and a reader that refuses to
// step outside its span. Layouts are in docs/protocol.md.
#include "shared/protocol/messages.hpp"

#include <algorithm>

namespace culvert::shared::protocol {
namespace {

class writer {
 public:
  explicit writer(frame_type type) : type_(type) { bytes_.resize(header_size); }
  void u8(std::uint8_t v) { bytes_.push_back(v); }
  void u16(std::uint16_t v) {
    bytes_.resize(bytes_.size() + 2);
    store_u16(bytes_.data() + bytes_.size() - 2, v);
  }
  void u64(std::uint64_t v) {
    bytes_.resize(bytes_.size() + 8);
    store_u64(bytes_.data() + bytes_.size() - 8, v);
  }
  void raw(std::span<const std::uint8_t> v) { bytes_.insert(bytes_.end(), v.begin(), v.end()); }
  // Short strings carry a one-byte length; longer input is cut, never overflowed.
  void str8(std::string_view s) {
    s = s.substr(0, 255);
    u8(std::uint8_t(s.size()));
    bytes_.insert(bytes_.end(), s.begin(), s.end());
  }
  void str16(std::string_view s, std::size_t max) {
    s = s.substr(0, max);
    u16(std::uint16_t(s.size()));
    bytes_.insert(bytes_.end(), s.begin(), s.end());
  }
  encoded_frame finish() {
    frame_header h{std::uint32_t(bytes_.size() - header_size), type_, flags::none, 0};
    encode_header(h, std::span<std::uint8_t, header_size>(bytes_.data(), header_size));
    return std::move(bytes_);
  }

 private:
  frame_type type_;
  encoded_frame bytes_;
};

class reader {
 public:
  explicit reader(std::span<const std::uint8_t> in) : in_(in) {}
  bool u8(std::uint8_t& v) {
    if (!need(1)) return false;
    v = in_[pos_++];
    return true;
  }
  bool u16(std::uint16_t& v) {
    if (!need(2)) return false;
    v = load_u16(in_.data() + pos_);
    pos_ += 2;
    return true;
  }
  bool u64(std::uint64_t& v) {
    if (!need(8)) return false;
    v = load_u64(in_.data() + pos_);
    pos_ += 8;
    return true;
  }
  bool raw(std::span<std::uint8_t> out) {
    if (!need(out.size())) return false;
    std::copy_n(in_.data() + pos_, out.size(), out.data());
    pos_ += out.size();
    return true;
  }
  bool str(std::string& out, std::size_t length) {
    if (!need(length)) return false;
    out.assign(reinterpret_cast<const char*>(in_.data() + pos_), length);
    pos_ += length;
    return true;
  }
  bool str8(std::string& out) {
    std::uint8_t n;
    return u8(n) && str(out, n);
  }
  bool str16(std::string& out, std::size_t max) {
    std::uint16_t n;
    return u16(n) && n <= max && str(out, n);
  }
  bool at_end() const { return pos_ == in_.size(); }

 private:
  bool need(std::size_t n) const { return in_.size() - pos_ >= n; }
  std::span<const std::uint8_t> in_;
  std::size_t pos_ = 0;
};

constexpr std::size_t max_error_text = 512;

}  // namespace

encoded_frame encode(const init_message& m) {
  writer w(frame_type::init);
  w.u16(m.version);
  w.u8(static_cast<std::uint8_t>(m.kind));
  w.str8(m.token);
  w.str8(m.subdomain.substr(0, 63));
  w.u8(m.reclaim ? 1 : 0);
  if (m.reclaim) {
    w.u64(m.reclaim->tunnel_id);
    w.raw(m.reclaim->secret);
  }
  return w.finish();
}

std::optional<init_message> decode_init(std::span<const std::uint8_t> in) {
  reader r(in);
  init_message m;
  std::uint8_t kind, has_reclaim;
  if (!r.u16(m.version)) return std::nullopt;
  // A different version may lay out the rest differently: report it before parsing further.
  if (m.version != protocol_version) return m;
  if (!r.u8(kind) || !r.str8(m.token) || !r.str8(m.subdomain) || !r.u8(has_reclaim))
    return std::nullopt;
  if (kind != std::uint8_t(tunnel_kind::http) && kind != std::uint8_t(tunnel_kind::tcp))
    return std::nullopt;
  m.kind = static_cast<tunnel_kind>(kind);
  if (m.subdomain.size() > 63 || has_reclaim > 1) return std::nullopt;
  if (has_reclaim) {
    reclaim_request rr;
    if (!r.u64(rr.tunnel_id) || !r.raw(rr.secret)) return std::nullopt;
    m.reclaim = rr;
  }
  if (!r.at_end()) return std::nullopt;
  return m;
}

encoded_frame encode(const domain_message& m) {
  writer w(frame_type::domain);
  w.u64(m.tunnel_id);
  w.raw(m.secret);
  w.u16(m.public_port);
  w.u16(m.heartbeat_interval_s);
  w.u8(m.data_connections);
  w.str8(m.domain);
  w.str8(m.public_url);
  return w.finish();
}

std::optional<domain_message> decode_domain(std::span<const std::uint8_t> in) {
  reader r(in);
  domain_message m;
  if (!r.u64(m.tunnel_id) || !r.raw(m.secret) || !r.u16(m.public_port) ||
      !r.u16(m.heartbeat_interval_s) || !r.u8(m.data_connections) || !r.str8(m.domain) ||
      !r.str8(m.public_url) || !r.at_end())
    return std::nullopt;
  if (m.data_connections == 0 || m.heartbeat_interval_s == 0) return std::nullopt;
  return m;
}

encoded_frame encode(const error_message& m) {
  writer w(frame_type::error);
  w.u16(static_cast<std::uint16_t>(m.code));
  w.str16(m.message, max_error_text);
  return w.finish();
}

std::optional<error_message> decode_error_message(std::span<const std::uint8_t> in) {
  reader r(in);
  error_message m;
  std::uint16_t code;
  if (!r.u16(code) || !r.str16(m.message, max_error_text) || !r.at_end()) return std::nullopt;
  m.code = static_cast<error_code>(code);  // unknown codes are kept: the text still explains
  return m;
}

encoded_frame encode(const data_init_message& m) {
  writer w(frame_type::data_init);
  w.u16(m.version);
  w.u64(m.tunnel_id);
  w.raw(m.secret);
  return w.finish();
}

std::optional<data_init_message> decode_data_init(std::span<const std::uint8_t> in) {
  reader r(in);
  data_init_message m;
  if (!r.u16(m.version) || !r.u64(m.tunnel_id) || !r.raw(m.secret) || !r.at_end())
    return std::nullopt;
  return m;
}

encoded_frame encode_empty(frame_type type) {
  return writer(type).finish();
}

std::string_view to_string(error_code c) {
  switch (c) {
    case error_code::protocol_error:
      return "protocol_error";
    case error_code::bad_token:
      return "bad_token";
    case error_code::name_taken:
      return "name_taken";
    case error_code::name_invalid:
      return "name_invalid";
    case error_code::no_capacity:
      return "no_capacity";
    case error_code::version_mismatch:
      return "version_mismatch";
    case error_code::handshake_timeout:
      return "handshake_timeout";
    case error_code::bad_secret:
      return "bad_secret";
    case error_code::internal:
      return "internal";
    case error_code::shutting_down:
      return "shutting_down";
    case error_code::unknown_tunnel:
      return "unknown_tunnel";
    case error_code::overloaded:
      return "overloaded";
  }
  return "unknown_error";
}

encoded_frame encode(const data_route_message& m) {
  writer w(frame_type::data_route);
  w.u16(m.version);
  w.raw(m.route_tag);
  return w.finish();
}

std::optional<data_route_message> decode_data_route(std::span<const std::uint8_t> in) {
  reader r(in);
  data_route_message m;
  if (!r.u16(m.version) || !r.raw(m.route_tag) || !r.at_end()) return std::nullopt;
  return m;
}

}  // namespace culvert::shared::protocol
