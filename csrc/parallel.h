// A minimal parallel-for over [0, n) for the ternary codecs: plain std::thread, no OpenMP (torch
// ships its own libgomp and two OpenMP runtimes in one process misbehave). Small jobs stay on
// the calling thread; the thread count comes from BITK_NUM_THREADS or the hardware. When the
// system refuses a thread (std::system_error: a process, memory or cgroup limit), the threads
// already started keep their chunks and the calling thread runs the rest: fewer threads, the same
// result (no codec's result depends on the split).
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <exception>
#include <system_error>
#include <thread>
#include <vector>

namespace bitk {

// Below this many elements a second thread costs more than it saves.
constexpr int64_t kParallelGrain = int64_t(1) << 18;
// No more threads than this, whatever BITK_NUM_THREADS asks: more than 4 per hardware thread
// only adds switching, and each thread costs a stack.
constexpr int kMaxThreadsPerCore = 4;
constexpr int kMaxThreads = 1024;

inline int hardware_threads() {
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : int(std::min<unsigned>(hw, kMaxThreads));
}

// BITK_NUM_THREADS if it is a whole positive number (capped at 4x the hardware threads and at
// 1024), else the hardware's thread count: "abc", "0", "-2", "4x" and "" are ignored.
inline int max_threads() {
  const int hw = hardware_threads();
  if (const char* env = std::getenv("BITK_NUM_THREADS")) {
    char* end = nullptr;
    errno = 0;
    const long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && errno == 0 && n > 0)
      return int(std::min<long>({n, long(kMaxThreadsPerCore) * hw, long(kMaxThreads)}));
  }
  return hw;
}

// Calls fn(begin, end) on disjoint chunks covering [0, n) units; `unit_cost` is the number of
// elements one unit touches, so the split depends on work, not on the unit size.
template <typename Fn>
void parallel_for(int64_t n, int64_t unit_cost, Fn&& fn) {
  if (n <= 0) return;
  const int64_t cost = std::max<int64_t>(unit_cost, 1);
  const int64_t work = n > std::numeric_limits<int64_t>::max() / cost ? std::numeric_limits<int64_t>::max() : n * cost;
  int64_t threads = std::min<int64_t>({int64_t(max_threads()), n, std::max<int64_t>(work / kParallelGrain, 1)});
  if (threads <= 1) {
    fn(int64_t(0), n);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(threads);
  const int64_t chunk = (n + threads - 1) / threads;
  int64_t done_by_threads = 0;  // [0, done_by_threads) is handed to started threads
  for (int64_t t = 0; t < threads; ++t) {
    const int64_t begin = t * chunk, end = std::min(n, begin + chunk);
    if (begin >= end) break;
    try {
      pool.emplace_back([&, t, begin, end] {
        try {
          fn(begin, end);
        } catch (...) {
          errors[t] = std::current_exception();
        }
      });
    } catch (const std::system_error&) {
      break;  // no more threads: the rest runs here
    }
    done_by_threads = end;
  }
  std::exception_ptr here;
  if (done_by_threads < n) {
    try {
      fn(done_by_threads, n);
    } catch (...) {
      here = std::current_exception();
    }
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  if (here) std::rethrow_exception(here);
}

}  // namespace bitk
