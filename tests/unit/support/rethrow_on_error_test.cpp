// The tests' own co_spawn completion token: a failure inside a coroutine leaves io_context::run()
// at once, however long the other work on the context would still run.
#include "tests/support/rethrow_on_error.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <stdexcept>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using culvert::tests::rethrow_on_error;

TEST_CASE("rethrow_on_error ends io_context::run with the coroutine's exception", "[support]") {
  asio::io_context io;
  asio::steady_timer long_wait(io, 30s);  // other work that would keep run_for() busy
  long_wait.async_wait([](boost::system::error_code) {});
  asio::co_spawn(
      io, []() -> asio::awaitable<void> { throw std::runtime_error("failed inside"); },
      rethrow_on_error);
  asio::co_spawn(
      io,
      []() -> asio::awaitable<int> {
        throw std::logic_error("with a result too");
        co_return 1;
      },
      rethrow_on_error);
  const auto started = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH(io.run_for(60s), "failed inside");
  CHECK_THROWS_WITH(io.run_for(60s), "with a result too");
  CHECK(std::chrono::steady_clock::now() - started < 1s);
}

TEST_CASE("rethrow_on_error lets a coroutine that succeeds end quietly", "[support]") {
  asio::io_context io;
  bool ran = false;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<int> {
        ran = true;
        co_return 7;
      },
      rethrow_on_error);
  CHECK_NOTHROW(io.run());
  CHECK(ran);
}
