// A minimal parallel-for over [0, n) for the ternary codecs: plain std::thread, no OpenMP (torch
// ships its own libgomp and two OpenMP runtimes in one process misbehave). Small jobs stay on
// the calling thread; the thread count comes from BITK_NUM_THREADS or the hardware.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <thread>
#include <vector>

namespace bitk {

// Below this many elements a second thread costs more than it saves.
constexpr int64_t kParallelGrain = int64_t(1) << 18;

inline int max_threads() {
  if (const char* env = std::getenv("BITK_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : int(hw);
}

// Calls fn(begin, end) on disjoint chunks covering [0, n) units; `unit_cost` is the number of
// elements one unit touches, so the split depends on work, not on the unit size.
template <typename Fn>
void parallel_for(int64_t n, int64_t unit_cost, Fn&& fn) {
  if (n <= 0) return;
  int64_t work = n * std::max<int64_t>(unit_cost, 1);
  int64_t threads = std::min<int64_t>({int64_t(max_threads()), n, std::max<int64_t>(work / kParallelGrain, 1)});
  if (threads <= 1) {
    fn(int64_t(0), n);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(threads);
  int64_t chunk = (n + threads - 1) / threads;
  for (int64_t t = 0; t < threads; ++t) {
    int64_t begin = t * chunk, end = std::min(n, begin + chunk);
    if (begin >= end) break;
    pool.emplace_back([&, t, begin, end] {
      try {
        fn(begin, end);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace bitk
