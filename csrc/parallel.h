// A minimal parallel-for over [0, n) for the ternary codecs and kernels. The chunks run on the
// OpenMP runtime already loaded in the process (torch's, so bitk's loops share its threads), else
// on a pool of plain std::threads that persist between calls; bitk links no OpenMP runtime of its
// own (two in one process misbehave). Small jobs stay on the calling thread; the thread count
// comes from set_num_threads (bitk.nn passes torch's), BITK_NUM_THREADS or the hardware. When the
// system refuses a thread (std::system_error: a process, memory or cgroup limit), fewer threads
// run the same chunks: the same result (no codec's result depends on the split).
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <thread>
#include <type_traits>

namespace bitk {

// The thread count set_num_threads() asked for (0: none): one object, defined in cpu_dispatch.cpp.
std::atomic<int>& requested_threads();

// Runs chunk(context, i, n, size) for i in [0, chunks) on the calling thread and the threads of
// the loaded OpenMP runtime's team or, without one, of a process-wide pool (cpu_dispatch.cpp):
// threads that persist between calls, started when first needed. When the system refuses a
// thread, fewer run; each chunk still runs exactly once. The first exception a chunk throws is
// rethrown here, after every chunk has finished. A call from inside a chunk runs its chunks on its
// own thread.
using ChunkFn = void (*)(void* context, int64_t index, int64_t n, int64_t size);
void run_chunks(int64_t chunks, ChunkFn chunk, void* context, int64_t n, int64_t size);

// Everything below has internal linkage: this header is compiled into each instruction set's
// build (cpu_dispatch.h), and an inline function shared between them could be linked from the
// widest one and run on a CPU without it.
namespace {

// Below this many elements a second thread costs more than it saves.
constexpr int64_t kParallelGrain = int64_t(1) << 18;
// No more threads than this, whatever BITK_NUM_THREADS asks: more than 4 per hardware thread
// only adds switching, and each thread costs a stack.
constexpr int kMaxThreadsPerCore = 4;
constexpr int kMaxThreads = 1024;

// Asked once per process: std::thread::hardware_concurrency() reads the CPU affinity from the
// kernel (~6 us), and every parallel loop asks.
inline int hardware_threads() {
  static const int count = [] {
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : int(std::min<unsigned>(hw, kMaxThreads));
  }();
  return count;
}

// Threads for the following calls (bitk.nn passes torch.get_num_threads(), so its kernels use as
// many threads as torch's intra-op pool); 0 returns to BITK_NUM_THREADS / the hardware.
inline void set_num_threads(int count) { requested_threads().store(std::max(count, 0)); }

// The set_num_threads() count if one is set, else BITK_NUM_THREADS if it is a whole positive
// number, else the hardware's thread count ("abc", "0", "-2", "4x" and "" are ignored); capped at
// 4x the hardware threads and at 1024.
inline int max_threads() {
  const int hw = hardware_threads();
  if (const int requested = requested_threads().load(); requested > 0)
    return std::min({requested, kMaxThreadsPerCore * hw, kMaxThreads});
  if (const char* env = std::getenv("BITK_NUM_THREADS")) {
    char* end = nullptr;
    errno = 0;
    const long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && errno == 0 && n > 0)
      return int(std::min<long>({n, long(kMaxThreadsPerCore) * hw, long(kMaxThreads)}));
  }
  return hw;
}

inline int64_t ceil_chunks(int64_t n, int64_t size) { return (n + size - 1) / size; }

// Calls fn(begin, end) on disjoint chunks covering [0, n) units, one chunk per thread; `unit_cost`
// is the number of elements one unit touches, so the split depends on work, not on the unit size.
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
  const int64_t chunk = (n + threads - 1) / threads;
  run_chunks(ceil_chunks(n, chunk), [](void* context, int64_t index, int64_t count, int64_t size) {
    const int64_t begin = index * size;
    (*static_cast<std::remove_reference_t<Fn>*>(context))(begin, std::min(begin + size, count));
  }, const_cast<void*>(static_cast<const void*>(&fn)), n, chunk);
}

}  // namespace
}  // namespace bitk
