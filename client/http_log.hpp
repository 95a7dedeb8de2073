// The client's HTTP request log: watches one visitor stream (bytes are never altered) and reports
// each request/response exchange on it: method, target, status, response body bytes, duration.
// Runs in the culvert CLI, one observer per stream. Handles keep-alive and pipelining,
// Content-Length and chunked bodies, HEAD/1xx/204/304 (no body), and a 101 upgrade (logged once,
// then the stream is opaque). Anything it cannot parse makes it go silent, never the stream fail.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <span>
#include <string>

#include "shared/net/mux_session.hpp"

namespace culvert::client {

struct http_exchange {
  std::string method;
  std::string target;                // escaped and capped (shared::log::printable): safe to print
  int status = 0;                    // 0: no response arrived
  std::uint64_t response_bytes = 0;  // body bytes (decoded length for chunked bodies)
  std::chrono::steady_clock::duration duration{};  // first request byte to last response byte
  bool complete = true;  // false: the stream ended before the response did
};

// "14:03:07.512 GET /index.html 200 1532 B 2.41 ms" in local time; an incomplete exchange
// ends with "(incomplete)", one without a response shows "-" for the status.
std::string format_exchange(const http_exchange&, std::chrono::system_clock::time_point when);

// Tracks the length of one HTTP/1.x message body as bytes arrive.
class http_body {
 public:
  enum class kind { none, length, chunked, until_close };
  void reset(kind, std::uint64_t length = 0);
  // Consumes body bytes from the front of `bytes`; returns how many. False in `ok` on a
  // malformed chunk size.
  std::size_t feed(std::span<const char> bytes, bool& ok);
  bool done() const { return state_ == state::done; }
  bool until_close() const { return state_ == state::until_close; }
  std::uint64_t payload_bytes() const { return payload_; }

 private:
  enum class state { done, length, chunk_size, chunk_data, chunk_data_end, trailers, until_close };
  state state_ = state::done;
  std::uint64_t remaining_ = 0;
  std::uint64_t payload_ = 0;
  std::string line_;  // the chunk-size or trailer line being read
};

class http_log_observer : public shared::net::stream_observer {
 public:
  using sink = std::function<void(const http_exchange&)>;
  using clock = std::function<std::chrono::steady_clock::time_point()>;

  explicit http_log_observer(
      sink, clock = [] { return std::chrono::steady_clock::now(); });

  void on_from_peer(std::span<const char> bytes) override;    // request side
  void on_from_socket(std::span<const char> bytes) override;  // response side
  void on_end(bool abnormal) override;

 private:
  struct head {
    std::string text;  // start line and headers, without the blank line
    bool ready = false;
  };
  struct pending {
    http_exchange exchange;
    std::chrono::steady_clock::time_point started;
  };

  bool collect_head(head&, std::span<const char>& bytes);
  bool start_request();
  bool start_response();
  void finish_response(bool complete);
  void emit(pending&, bool complete);

  sink sink_;
  clock now_;
  bool opaque_ = false;  // upgraded, tunnelled or unparseable: stop looking

  head request_head_;
  http_body request_body_;
  bool in_request_body_ = false;
  std::deque<pending> requests_;  // sent, response not yet complete (pipelining)

  head response_head_;
  http_body response_body_;
  bool in_response_body_ = false;
};

}  // namespace culvert::client
