// A co_spawn completion token for unit tests: rethrows whatever escaped the coroutine (a failed
// REQUIRE, an unexpected exception), so io_context::run() ends at once and Catch2 reports the
// failure where it happened. A bare `detached` swallows it and leaves run_for() waiting out its
// whole limit. Test code only.
#pragma once

#include <exception>

namespace culvert::tests {

struct rethrow_on_error_t {
  // Takes the coroutine's result too (awaitable<T>), and drops it: the test reads its outcome
  // from what the coroutine wrote, not from here.
  template <typename... Results>
  void operator()(std::exception_ptr failure, Results&&...) const {
    if (failure) std::rethrow_exception(failure);
  }
};

// asio::co_spawn(io, work(), rethrow_on_error): a failure inside work() leaves io.run() at once.
inline constexpr rethrow_on_error_t rethrow_on_error{};

}  // namespace culvert::tests
