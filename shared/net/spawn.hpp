// co_spawn with a completion handler that logs what escaped the coroutine, instead of the bare
// `detached` that would swallow it.
#pragma once

#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <exception>
#include <string>
#include <utility>

namespace culvert::shared::net {

template <typename Executor, typename Awaitable>
void spawn(Executor&& executor, Awaitable&& work, std::string what) {
  boost::asio::co_spawn(std::forward<Executor>(executor), std::forward<Awaitable>(work),
                        [what = std::move(what)](std::exception_ptr failure) {
                          if (!failure) return;
                          try {
                            std::rethrow_exception(failure);
                          } catch (const std::exception& e) {
                            spdlog::error("{} failed: {}", what, e.what());
                          }
                        });
}

}  // namespace culvert::shared::net
