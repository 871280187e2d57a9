// Running a blocking call (libpq, file I/O) from a coroutine without
// stalling an io thread: the call runs on a small shared thread pool
// (ServerState::blocking) and the coroutine resumes on its own executor
// afterwards, so session code never needs a lock for its own state.
#pragma once

#include <exception>
#include <optional>
#include <type_traits>
#include <utility>

#include "proxy/asio.h"

namespace pgcloak::proxy {

// Threads in ServerState::blocking. Small on purpose: these calls wait on
// PostgreSQL, not on the CPU.
inline constexpr int blocking_pool_threads = 2;

// co_await run_blocking(pool, [&] { return blocking_call(); }) -> its result.
// `f` runs on a pool thread; references it captures must outlive the call,
// which they do when they point into the awaiting coroutine's frame. An
// exception thrown by `f` is rethrown in the coroutine.
template <class F, class R = std::invoke_result_t<F&>>
awaitable<R> run_blocking(asio::thread_pool& pool, F f) {
  static_assert(!std::is_void_v<R>, "run_blocking needs a function that returns a value");
  std::optional<R> result;
  std::exception_ptr failure;
  co_await asio::async_initiate<decltype(asio::use_awaitable), void()>(
      [&](auto handler) {
        // Keeps the coroutine's io_context alive while the call runs.
        auto home =
            asio::prefer(asio::get_associated_executor(handler), asio::execution::outstanding_work.tracked);
        asio::post(pool, [&, home = std::move(home), handler = std::move(handler)]() mutable {
          try {
            result.emplace(f());
          } catch (...) {
            failure = std::current_exception();
          }
          asio::post(home, std::move(handler));
        });
      },
      asio::use_awaitable);
  if (failure) std::rethrow_exception(failure);
  co_return std::move(*result);
}

}  // namespace pgcloak::proxy
