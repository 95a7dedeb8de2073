// co_spawn with a completion handler that logs what escaped the coroutine, instead of the bare
// `detached` that would swallow it. `what` is a string literal: the handler lives as long as the
// coroutine, and two relays per visitor stream should not each hold a copy of their name.
#pragma once

#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <exception>
#include <utility>

namespace culvert::shared::net {

template <typename Executor, typename Awaitable>
void spawn(Executor&& executor, Awaitable&& work, const char* what) {
  boost::asio::co_spawn(std::forward<Executor>(executor), std::forward<Awaitable>(work),
                        [what](std::exception_ptr failure) {
                          if (!failure) return;
                          try {
                            std::rethrow_exception(failure);
                          } catch (const std::exception& e) {
                            spdlog::error("{} failed: {}", what, e.what());
                          }
                        });
}

}  // namespace culvert::shared::net
