// Runs one coroutine to its end on a test's io_context and hands back its result: what escaped
// it is rethrown at once (as with tests/support/rethrow_on_error.hpp), and a coroutine unfinished
// after `limit` fails the test instead of hanging it. Test code only.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <exception>
#include <optional>
#include <utility>

namespace culvert::tests {

// io.run_for(limit) returns as soon as nothing is left to do, so `limit` is only a bound.
template <typename T>
T run_coroutine(boost::asio::io_context& io, boost::asio::awaitable<T> work,
                std::chrono::steady_clock::duration limit = std::chrono::seconds(10)) {
  std::optional<T> result;
  boost::asio::co_spawn(io, std::move(work), [&result](std::exception_ptr failure, T value) {
    if (failure) std::rethrow_exception(failure);
    result.emplace(std::move(value));
  });
  io.restart();
  io.run_for(limit);
  REQUIRE(result.has_value());  // else still running after `limit`
  return std::move(*result);
}

inline void run_coroutine(boost::asio::io_context& io, boost::asio::awaitable<void> work,
                          std::chrono::steady_clock::duration limit = std::chrono::seconds(10)) {
  bool done = false;
  boost::asio::co_spawn(io, std::move(work), [&done](std::exception_ptr failure) {
    if (failure) std::rethrow_exception(failure);
    done = true;
  });
  io.restart();
  io.run_for(limit);
  REQUIRE(done);  // else still running after `limit`
}

}  // namespace culvert::tests
