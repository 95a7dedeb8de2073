// The client's HTTP request log: exchanges found in byte streams split at every possible point,
// keep-alive and pipelining, body framing, bodiless responses, upgrades, and garbage.
#include "client/http_log.hpp"

#include <catch2/catch.hpp>

using culvert::client::format_exchange;
using culvert::client::http_exchange;
using culvert::client::http_log_observer;
using namespace std::chrono_literals;

namespace {

// Feeds a request side and a response side, each in chunks of `step` bytes, alternating.
struct harness {
  std::vector<http_exchange> seen;
  std::chrono::steady_clock::time_point now{};
  http_log_observer observer{[this](const http_exchange& e) { seen.push_back(e); },
                             [this] { return now; }};

  void request(std::string_view bytes, std::size_t step = 1 << 20) {
    for (std::size_t i = 0; i < bytes.size(); i += step)
      observer.on_from_peer(std::span(bytes.data() + i, std::min(step, bytes.size() - i)));
  }
  void response(std::string_view bytes, std::size_t step = 1 << 20) {
    for (std::size_t i = 0; i < bytes.size(); i += step)
      observer.on_from_socket(std::span(bytes.data() + i, std::min(step, bytes.size() - i)));
  }
};

}  // namespace

TEST_CASE("one GET with a Content-Length response, split at every byte", "[http_log]") {
  const std::string req = "GET /index.html?q=1 HTTP/1.1\r\nHost: a.localhost\r\n\r\n";
  const std::string resp =
      "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\ncontent-length:  5\r\n\r\nhello";
  for (std::size_t step : {1, 2, 3, 7, 1000}) {
    harness h;
    h.request(req, step);
    h.now += 2410us;
    h.response(resp, step);
    REQUIRE(h.seen.size() == 1);
    CHECK(h.seen[0].method == "GET");
    CHECK(h.seen[0].target == "/index.html?q=1");
    CHECK(h.seen[0].status == 200);
    CHECK(h.seen[0].response_bytes == 5);
    CHECK(h.seen[0].duration == 2410us);
    CHECK(h.seen[0].complete);
  }
}

TEST_CASE("keep-alive and pipelined requests are matched in order", "[http_log]") {
  harness h;
  h.request(
      "POST /upload HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello worldGET /a HTTP/1.1\r\n\r\n"
      "PUT /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
      "HEAD /b HTTP/1.1\r\n\r\n");
  h.response("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", 5);
  h.response(
      "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
      "4;ext=1\r\nnope\r\n3\r\n!!!\r\n0\r\nX-Trailer: 1\r\n\r\n",
      4);
  h.response("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
  h.response("HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n");  // HEAD: no body follows
  REQUIRE(h.seen.size() == 4);
  CHECK((h.seen[0].method == "POST" && h.seen[0].status == 201 && h.seen[0].response_bytes == 2));
  CHECK((h.seen[1].target == "/a" && h.seen[1].status == 404 && h.seen[1].response_bytes == 7));
  CHECK((h.seen[2].method == "PUT" && h.seen[2].status == 204 && h.seen[2].response_bytes == 0));
  CHECK((h.seen[3].method == "HEAD" && h.seen[3].status == 200 && h.seen[3].response_bytes == 0));
  for (const auto& e : h.seen) CHECK(e.complete);
}

TEST_CASE("304 has no body, and a body without length runs until the close", "[http_log]") {
  harness h;
  h.request("GET /cached HTTP/1.1\r\n\r\nGET /stream HTTP/1.0\r\n\r\n");
  h.response("HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n");
  h.response("HTTP/1.0 200 OK\r\n\r\nsome bytes");
  REQUIRE(h.seen.size() == 1);
  CHECK(h.seen[0].status == 304);
  h.response(" and more");
  h.observer.on_end(false);
  REQUIRE(h.seen.size() == 2);
  CHECK(h.seen[1].response_bytes == 19);
  CHECK(h.seen[1].complete);
}

TEST_CASE("a stream that ends early reports the exchange as incomplete", "[http_log]") {
  SECTION("mid-body reset") {
    harness h;
    h.request("GET /big HTTP/1.1\r\n\r\n");
    h.response("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc");
    h.observer.on_end(true);
    REQUIRE(h.seen.size() == 1);
    CHECK(h.seen[0].status == 200);
    CHECK(h.seen[0].response_bytes == 3);  // what arrived before the reset
    CHECK_FALSE(h.seen[0].complete);
  }
  SECTION("no response at all") {
    harness h;
    h.request("GET /slow HTTP/1.1\r\n\r\n");
    h.observer.on_end(false);
    REQUIRE(h.seen.size() == 1);
    CHECK(h.seen[0].status == 0);
    CHECK_FALSE(h.seen[0].complete);
  }
  SECTION("until-close body cut by a reset") {
    harness h;
    h.request("GET /s HTTP/1.1\r\n\r\n");
    h.response("HTTP/1.1 200 OK\r\n\r\npartial");
    h.observer.on_end(true);
    REQUIRE(h.seen.size() == 1);
    CHECK_FALSE(h.seen[0].complete);
  }
}

TEST_CASE("an upgrade is logged once, then the stream is opaque", "[http_log]") {
  harness h;
  h.request("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
  h.response("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello");
  h.request("\x81\x85GET / HTTP/1.1\r\n\r\n");
  h.response("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  h.observer.on_end(false);
  REQUIRE(h.seen.size() == 1);
  CHECK(h.seen[0].status == 101);
  CHECK(h.seen[0].target == "/ws");
}

TEST_CASE("garbage makes the observer go silent", "[http_log]") {
  SECTION("not HTTP") {
    harness h;
    h.request(std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11) + "\r\n\r\n");
    h.response("anything\r\n\r\n");
    h.observer.on_end(false);
    CHECK(h.seen.empty());
  }
  SECTION("headers that never end") {
    harness h;
    h.request("GET / HTTP/1.1\r\n" + std::string(100000, 'x'));
    h.request("\r\n\r\n");
    h.observer.on_end(false);
    CHECK(h.seen.empty());
  }
  SECTION("a response nobody asked for") {
    harness h;
    h.response("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    CHECK(h.seen.empty());
  }
  SECTION("a bad chunk size") {
    harness h;
    h.request("GET / HTTP/1.1\r\n\r\n");
    h.response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    CHECK(h.seen.empty());
  }
  SECTION("conflicting Content-Length values") {
    harness h;
    h.request("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc");
    h.response("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    CHECK(h.seen.empty());
  }
}

TEST_CASE("format_exchange prints one readable line", "[http_log]") {
  http_exchange e{"GET", "/index.html", 200, 1532, 2410us, true};
  auto when = std::chrono::system_clock::time_point(std::chrono::milliseconds(1'700'000'000'512));
  auto line = format_exchange(e, when);
  CHECK(line.substr(8) == ".512 GET /index.html 200 1532 B 2.41 ms");
  CHECK(line[2] == ':');
  CHECK(line[5] == ':');
  e.status = 0;
  e.complete = false;
  CHECK(format_exchange(e, when).ends_with("GET /index.html - 1532 B 2.41 ms (incomplete)"));
}

// A visitor chooses the target: escape sequences and line breaks in it must not reach the
// terminal (issue #16 item 4), and a huge one is cut.
TEST_CASE("a target holding control bytes is logged escaped and capped", "[http_log]") {
  harness h;
  h.request(
      "GET /\x1b]0;pwned\x07\x1b[2J\nFORGED 12:00:00.000 GET /x 200 1 B 0.01 ms HTTP/1.1\r\n"
      "Host: a\r\n\r\n");
  h.response("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  REQUIRE(h.seen.size() == 1);
  CHECK(h.seen[0].target ==
        "/\\x1b]0;pwned\\x07\\x1b[2J\\x0aFORGED 12:00:00.000 GET /x 200 1 B 0.01 ms");
  const auto line = format_exchange(h.seen[0], std::chrono::system_clock::now());
  CHECK(line.find_first_of("\x1b\x07\r\n") == std::string::npos);

  harness big;
  big.request("GET /" + std::string(5000, 'a') + " HTTP/1.1\r\n\r\n");
  big.response("HTTP/1.1 204 No Content\r\n\r\n");
  REQUIRE(big.seen.size() == 1);
  CHECK(big.seen[0].target.size() == 303);  // 300 bytes and "..."
  CHECK(big.seen[0].target.ends_with("..."));
}
