// HTTP/1.x exchange tracking for the client's request log: a minimal, incremental parser of
// message heads and body lengths (RFC 9112 section 6.3). It never alters or holds back bytes.
#include "client/http_log.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>

#include "shared/log/printable.hpp"

namespace culvert::client {
namespace {

constexpr std::size_t max_head_bytes = 64 * 1024;
constexpr std::size_t max_line_bytes = 4096;  // a chunk-size or trailer line
// A visitor chooses the target: it reaches the terminal escaped (no ESC, CR or LF) and capped,
// so a request cannot retitle the window, clear the screen or forge a log line.
constexpr std::size_t max_target_shown = 300;
// Pipelined requests still waiting for their responses, beyond which stray CRLFs are no longer
// skipped for them (the head parser then sees them and the stream turns opaque).
constexpr std::size_t max_waiting_requests = 64;

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool is_token(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) ||
           std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
  });
}

// The head's start line and its header fields that decide the body length.
struct parsed_head {
  std::string_view start_line;
  std::optional<std::uint64_t> content_length;
  bool chunked = false;
  bool valid = true;
};

parsed_head parse_head(std::string_view text) {
  parsed_head head;
  auto end = text.find("\r\n");
  head.start_line = text.substr(0, end);
  while (end != std::string_view::npos) {
    text.remove_prefix(end + 2);
    end = text.find("\r\n");
    auto line = text.substr(0, end);
    auto colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    auto name = line.substr(0, colon);
    auto value = trim(line.substr(colon + 1));
    if (iequals(name, "content-length")) {
      std::uint64_t n = 0;
      auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (ec != std::errc{} || ptr != value.data() + value.size() ||
          (head.content_length && *head.content_length != n))
        head.valid = false;
      head.content_length = n;
    } else if (iequals(name, "transfer-encoding")) {
      // chunked must be the final coding; compare the last comma-separated element.
      auto last = value.rfind(',');
      auto coding = trim(last == std::string_view::npos ? value : value.substr(last + 1));
      head.chunked = iequals(coding, "chunked");
    }
  }
  return head;
}

}  // namespace

std::string format_exchange(const http_exchange& e, std::chrono::system_clock::time_point when) {
  using namespace std::chrono;
  auto t = system_clock::to_time_t(when);
  std::tm local{};
  localtime_r(&t, &local);
  auto millis = duration_cast<milliseconds>(when.time_since_epoch()).count() % 1000;
  auto ms = duration<double, std::milli>(e.duration).count();
  std::string status = e.status ? std::to_string(e.status) : "-";
  return fmt::format("{:02}:{:02}:{:02}.{:03} {} {} {} {} B {:.2f} ms{}", local.tm_hour,
                     local.tm_min, local.tm_sec, millis, e.method, e.target, status,
                     e.response_bytes, ms, e.complete ? "" : " (incomplete)");
}

void http_body::reset(kind k, std::uint64_t length) {
  payload_ = 0;
  line_.clear();
  switch (k) {
    case kind::none:
      state_ = state::done;
      break;
    case kind::length:
      remaining_ = length;
      state_ = length ? state::length : state::done;
      break;
    case kind::chunked:
      state_ = state::chunk_size;
      break;
    case kind::until_close:
      state_ = state::until_close;
      break;
  }
}

std::size_t http_body::feed(std::span<const char> bytes, bool& ok) {
  ok = true;
  std::size_t used = 0;
  auto take_line = [&]() -> bool {  // true once line_ holds a whole line (without CRLF)
    while (used < bytes.size()) {
      char c = bytes[used++];
      if (c == '\n') {
        if (!line_.empty() && line_.back() == '\r') line_.pop_back();
        return true;
      }
      line_.push_back(c);
      if (line_.size() > max_line_bytes) {
        ok = false;
        return false;
      }
    }
    return false;
  };
  while (used < bytes.size() && ok && state_ != state::done) {
    switch (state_) {
      case state::length:
      case state::chunk_data: {
        auto n = static_cast<std::size_t>(std::min<std::uint64_t>(remaining_, bytes.size() - used));
        used += n;
        payload_ += n;
        remaining_ -= n;
        if (remaining_ == 0) state_ = state_ == state::length ? state::done : state::chunk_data_end;
        break;
      }
      case state::until_close:
        payload_ += bytes.size() - used;
        used = bytes.size();
        break;
      case state::chunk_size: {
        if (!take_line()) break;
        std::string_view digits = line_;
        digits = trim(digits.substr(0, digits.find(';')));  // drop chunk extensions
        std::uint64_t size = 0;
        auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), size, 16);
        if (digits.empty() || ec != std::errc{} || ptr != digits.data() + digits.size()) {
          ok = false;
          break;
        }
        line_.clear();
        remaining_ = size;
        state_ = size ? state::chunk_data : state::trailers;
        break;
      }
      case state::chunk_data_end:
        if (!take_line()) break;
        if (!line_.empty()) ok = false;
        line_.clear();
        state_ = state::chunk_size;
        break;
      case state::trailers:
        if (!take_line()) break;
        if (line_.empty()) state_ = state::done;
        line_.clear();
        break;
      case state::done:
        break;
    }
  }
  return used;
}

http_log_observer::http_log_observer(sink s, clock now)
    : sink_(std::move(s)), now_(std::move(now)) {}

// Appends to the head until its blank line; leaves `bytes` at the first byte after the head.
bool http_log_observer::collect_head(head& h, std::span<const char>& bytes) {
  auto old_size = h.text.size();
  auto room = max_head_bytes + 4 - old_size;
  auto n = std::min(room, bytes.size());
  h.text.append(bytes.data(), n);
  auto from = old_size >= 3 ? old_size - 3 : 0;
  auto end = h.text.find("\r\n\r\n", from);
  if (end == std::string::npos) {
    bytes = bytes.subspan(n);
    if (h.text.size() > max_head_bytes) opaque_ = true;  // not HTTP, or absurd headers
    return false;
  }
  auto consumed = end + 4 - old_size;
  bytes = bytes.subspan(consumed);
  h.text.resize(end);
  h.ready = true;
  return true;
}

void http_log_observer::on_from_peer(std::span<const char> bytes) {
  while (!bytes.empty() && !opaque_) {
    if (in_request_body_) {
      bool ok = true;
      bytes = bytes.subspan(request_body_.feed(bytes, ok));
      if (!ok) opaque_ = true;
      if (request_body_.done()) in_request_body_ = false;
      continue;
    }
    if (request_head_.text.empty() && requests_.size() < max_waiting_requests && bytes.size() &&
        (bytes.front() == '\r' || bytes.front() == '\n')) {
      bytes = bytes.subspan(1);  // stray CRLF between requests is allowed (RFC 9112 2.2)
      continue;
    }
    if (!collect_head(request_head_, bytes)) return;
    if (!start_request()) opaque_ = true;
  }
}

bool http_log_observer::start_request() {
  auto text = std::move(request_head_.text);
  request_head_ = {};
  auto parsed = parse_head(text);
  auto line = parsed.start_line;
  auto sp1 = line.find(' ');
  auto sp2 = line.rfind(' ');
  if (!parsed.valid || sp1 == std::string_view::npos || sp2 == sp1) return false;
  auto method = line.substr(0, sp1);
  auto version = line.substr(sp2 + 1);
  if (!is_token(method) || !version.starts_with("HTTP/1.")) return false;

  pending p;
  p.exchange.method = std::string(method);
  p.exchange.target = shared::log::printable(line.substr(sp1 + 1, sp2 - sp1 - 1), max_target_shown);
  p.started = now_();
  requests_.push_back(std::move(p));

  if (parsed.chunked)
    request_body_.reset(http_body::kind::chunked);
  else if (parsed.content_length)
    request_body_.reset(http_body::kind::length, *parsed.content_length);
  else
    request_body_.reset(http_body::kind::none);
  in_request_body_ = !request_body_.done();
  return true;
}

void http_log_observer::on_from_socket(std::span<const char> bytes) {
  while (!bytes.empty() && !opaque_) {
    if (in_response_body_) {
      bool ok = true;
      bytes = bytes.subspan(response_body_.feed(bytes, ok));
      if (!ok) {
        opaque_ = true;
        return;
      }
      if (response_body_.done()) finish_response(true);
      continue;
    }
    if (!collect_head(response_head_, bytes)) return;
    if (!start_response()) opaque_ = true;
  }
}

bool http_log_observer::start_response() {
  auto text = std::move(response_head_.text);
  response_head_ = {};
  if (requests_.empty()) return false;  // a response nobody asked for: not HTTP as we know it
  auto parsed = parse_head(text);
  auto line = parsed.start_line;
  if (!parsed.valid || !line.starts_with("HTTP/1.") || line.size() < 12 || line[8] != ' ')
    return false;
  int status = 0;
  auto digits = line.substr(9, 3);
  auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + 3, status);
  if (ec != std::errc{} || ptr != digits.data() + 3 || status < 100 || status > 999) return false;

  auto& request = requests_.front();
  request.exchange.status = status;
  if (status == 101 || (request.exchange.method == "CONNECT" && status / 100 == 2)) {
    // From here on the stream carries another protocol (WebSocket, a tunnel): log once, go quiet.
    emit(request, true);
    requests_.pop_front();
    opaque_ = true;
    return true;
  }
  if (status / 100 == 1) return true;  // interim (100 Continue, 103): the final one follows

  bool bodiless = request.exchange.method == "HEAD" || status == 204 || status == 304;
  if (bodiless)
    response_body_.reset(http_body::kind::none);
  else if (parsed.chunked)
    response_body_.reset(http_body::kind::chunked);
  else if (parsed.content_length)
    response_body_.reset(http_body::kind::length, *parsed.content_length);
  else
    response_body_.reset(http_body::kind::until_close);
  if (response_body_.done())
    finish_response(true);
  else
    in_response_body_ = true;
  return true;
}

void http_log_observer::finish_response(bool complete) {
  in_response_body_ = false;
  if (requests_.empty()) return;
  requests_.front().exchange.response_bytes = response_body_.payload_bytes();
  emit(requests_.front(), complete);
  requests_.pop_front();
}

void http_log_observer::emit(pending& p, bool complete) {
  p.exchange.duration = now_() - p.started;
  p.exchange.complete = complete;
  if (sink_) sink_(p.exchange);
}

void http_log_observer::on_end(bool abnormal) {
  if (opaque_ && requests_.empty()) return;
  // A body that runs until the connection closes is complete only if it closed cleanly.
  if (in_response_body_) finish_response(!abnormal && response_body_.until_close());
  for (auto& p : requests_) emit(p, false);
  requests_.clear();
}

}  // namespace culvert::client
