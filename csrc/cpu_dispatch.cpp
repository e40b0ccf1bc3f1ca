// The public bitk:: functions of ternary_codecs.h, ternary_gemm.h, i2s_gemm.h,
// quantize_activations.h, quantize_gradients.h, convert_bf16.h, rms_norm.h and relu2_gate.h: each
// calls the build of the instruction set cpu_kernel() names (cpu_dispatch.h).
#include "cpu_dispatch.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "parallel.h"

#include "convert_bf16.h"
#include "i2s_gemm.h"
#include "quantize_activations.h"
#include "quantize_gradients.h"
#include "relu2_gate.h"
#include "rms_norm.h"
#include "ternary_codecs.h"
#include "ternary_gemm.h"

// The GEMMs of every build, the avx_vnni one included.
#define BITK_GEMM_DECLARATIONS                                                                          \
  void ternary_gemm_rows(const int8_t* xq, const float* factor, int64_t m, int64_t k,                 \
                         const uint8_t* packed, int64_t n, float* y);                                 \
  void ternary_gemm(const int8_t* xq, const float* s, int64_t m, int64_t k, const uint8_t* packed,    \
                    int64_t n, float gamma, float* y);                                                \
  void ternary_gemm_divide(const int8_t* xq, const float* s, int64_t m, int64_t k,                    \
                           const uint8_t* packed, int64_t n, float scale, float* y);                  \
  void ternary_gemm_int32(const int8_t* xq, int64_t m, int64_t k, const uint8_t* packed, int64_t n,   \
                          int32_t* acc);                                                              \
  void i2s_gemm_divide(const int8_t* xq, const float* s, int64_t m, int64_t k, const uint8_t* w,      \
                       int64_t n, float scale, float* y);                                             \
  void i2s_gemm_int32(const int8_t* xq, int64_t m, int64_t k, const uint8_t* w, int64_t n,            \
                      int32_t* acc);

// The per-instruction-set builds: the same declarations in bitk::isa_<name>.
#define BITK_DECLARE_ISA(ns)                                                                          \
  namespace bitk::ns {                                                                                \
  I2SLayout parse_i2s_layout(const std::string& name);                                                \
  double abs_sum(const float* w, int64_t n);                                                          \
  float ternarize(const float* w, int64_t rows, int64_t cols, int8_t* codes);                         \
  float ternarize_bf16(const uint16_t* w, int64_t rows, int64_t cols, int8_t* codes);                 \
  void pack_i2s(const int8_t* codes, int64_t rows, int64_t cols, float scale, I2SLayout layout,       \
                uint8_t* out);                                                                        \
  float unpack_i2s(const uint8_t* data, int64_t rows, int64_t cols, I2SLayout layout, int8_t* codes); \
  void quantize_i2s(const float* w, int64_t rows, int64_t cols, I2SLayout layout, uint8_t* out);      \
  void dequantize_i2s(const uint8_t* data, int64_t rows, int64_t cols, I2SLayout layout, float* out); \
  void quantize_tq2_0(const float* w, int64_t rows, int64_t cols, uint8_t* out);                      \
  void dequantize_tq2_0(const uint8_t* data, int64_t rows, int64_t cols, float* out);                 \
  void quantize_tq1_0(const float* w, int64_t rows, int64_t cols, uint8_t* out);                      \
  void dequantize_tq1_0(const uint8_t* data, int64_t rows, int64_t cols, float* out);                 \
  uint16_t float_to_half(float f);                                                                    \
  float half_to_float(uint16_t h);                                                                    \
  int64_t ternary_gemm_packed_size(int64_t n, int64_t k);                                             \
  void ternary_gemm_pack(const int8_t* codes, int64_t n, int64_t k, uint8_t* packed);                 \
  void ternary_gemm_pack_transposed(const int8_t* codes, int64_t n, int64_t k, uint8_t* packed);      \
  BITK_GEMM_DECLARATIONS                                                                              \
  void ternary_scale(const int8_t* codes, int64_t count, float gamma, float* out);                    \
  int64_t i2s_gemm_weight_bytes(int64_t n, int64_t k);                                                \
  void quantize_activations(const float* x, int64_t m, int64_t k, ActivationScale mode, int8_t* xq,   \
                            float* s);                                                                \
  void int8_to_bf16(const int8_t* src, int64_t count, uint16_t* out);                                 \
  void float_to_bf16(const float* src, const float* divisor, int64_t rows, int64_t cols, uint16_t* out); \
  void bf16_to_float(const uint16_t* src, int64_t count, bool scale_it, float scale, float* out);       \
  void quantize_gradient_rows(const float* g, int64_t rows, int64_t cols, int8_t* q, float* step);      \
  void quantize_gradient_columns(const float* src, const float* factor, int64_t rows, int64_t cols,     \
                                 int8_t* q, float* step);                                               \
  void dequantize_int32_rows(int32_t* acc, const float* step, int64_t rows, int64_t cols);             \
  void rms_norm_apply(const float* x, const float* rms, const float* w, int64_t rows, int64_t cols,      \
                      float* y);                                                                        \
  void rms_norm_backward_terms(const float* g, const float* x, const float* rms, const float* w,         \
                               int64_t rows, int64_t cols, float* t, float* p);                          \
  void rms_norm_backward_input(const float* g, const float* x, const float* rms, const float* w,         \
                               const float* coef, int64_t rows, int64_t cols, float* gd, float* gs);     \
  void relu2_gate(const float* gate, const float* up, int64_t count, float* h);                          \
  void relu2_gate_backward(const float* gate, const float* up, const float* gh, int64_t count,           \
                           float* ggate, float* gup);                                                    \
  }

BITK_DECLARE_ISA(isa_scalar)
#if defined(BITK_HAVE_X86_KERNELS)
BITK_DECLARE_ISA(isa_avx2)
BITK_DECLARE_ISA(isa_avx512_vnni)
#endif
#if defined(BITK_HAVE_AVX_VNNI)
// The avx_vnni build holds the GEMMs only (ternary_gemm.cpp, i2s_gemm.cpp); the rest of that
// variant is the AVX2 build's.
namespace bitk::isa_avx_vnni {
BITK_GEMM_DECLARATIONS
}  // namespace bitk::isa_avx_vnni
#endif

namespace bitk {
namespace {

constexpr int kNone = -1;

bool supported(CpuKernel kernel) {
  switch (kernel) {
    case CpuKernel::kScalar:
      return true;
#if defined(BITK_HAVE_X86_KERNELS)
    case CpuKernel::kAvx2:
      // __builtin_cpu_supports also checks that the OS saves the vector registers (XGETBV).
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
#if defined(BITK_HAVE_AVX_VNNI)
    case CpuKernel::kAvxVnni:
      // vpdpbusd on ymm registers: VEX-encoded with AVX-VNNI, else EVEX-encoded with AVX-512 VNNI
      // and VL (vnni256.h), so AVX-512 machines run this build too when it is forced.
      return supported(CpuKernel::kAvx2) &&
             (__builtin_cpu_supports("avxvnni") ||
              (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl")));
#endif
    case CpuKernel::kAvx512Vnni:
      return supported(CpuKernel::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512cd") &&
             __builtin_cpu_supports("avx512vnni");
#endif
    default:
      return false;
  }
}

// From the baseline up: the best supported one is the default.
constexpr CpuKernel kAll[] = {CpuKernel::kScalar, CpuKernel::kAvx2, CpuKernel::kAvxVnni,
                              CpuKernel::kAvx512Vnni};

int parse(const std::string& name) {
  for (CpuKernel k : kAll)
    if (name == cpu_kernel_name(k)) return int(k);
  return kNone;
}

CpuKernel best() {
  CpuKernel choice = CpuKernel::kScalar;
  for (CpuKernel k : kAll)
    if (supported(k)) choice = k;
  return choice;
}

// BITK_CPU_KERNEL when it names a supported variant, else the best (an unknown or unsupported name
// is ignored here; bitk's Python layer reports it).
CpuKernel from_environment() {
  if (const char* env = std::getenv("BITK_CPU_KERNEL")) {
    const int k = parse(env);
    if (k != kNone && supported(CpuKernel(k))) return CpuKernel(k);
  }
  return best();
}

std::atomic<int>& chosen() {
  static std::atomic<int> kernel{int(from_environment())};
  return kernel;
}

}  // namespace

// ---------------------------------------------------------------------------- the thread pool

namespace {

thread_local bool in_chunk = false;  // a run_chunks call from inside a chunk runs inline

// Workers that wait for jobs between calls. One job at a time (callers queue on `serial`); a job
// is a count of chunks that the caller and the woken workers take in turn from an atomic counter.
class Pool {
 public:
  void run(int64_t chunks, ChunkFn chunk, void* context, int64_t n, int64_t size) {
    std::lock_guard<std::mutex> serial(serial_);
    start_workers(chunks - 1);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = {chunk, context, n, size, chunks};
      next_.store(0);
      error_ = nullptr;
      helpers_ = std::min<int64_t>(chunks - 1, int64_t(workers_.size()));
      busy_ = helpers_;
      ++generation_;
    }
    wake_.notify_all();
    work();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return busy_ == 0; });
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  }

 private:
  struct Job {
    ChunkFn chunk = nullptr;
    void* context = nullptr;
    int64_t n = 0, size = 0, count = 0;
  };

  // Up to `wanted` workers in all; a refused thread leaves fewer (the caller's share grows).
  void start_workers(int64_t wanted) {
    while (int64_t(workers_.size()) < wanted) {
      const int64_t index = int64_t(workers_.size());
      try {
        workers_.emplace_back([this, index] { loop(index); });
      } catch (const std::system_error&) {
        return;
      }
    }
  }

  void work() {
    in_chunk = true;
    for (int64_t i = next_.fetch_add(1); i < job_.count; i = next_.fetch_add(1)) {
      try {
        job_.chunk(job_.context, i, job_.n, job_.size);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
    }
    in_chunk = false;
  }

  void loop(int64_t index) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (index >= helpers_) continue;  // not needed for this job
      }
      work();
      std::lock_guard<std::mutex> lock(mutex_);
      if (--busy_ == 0) done_.notify_one();
    }
  }

  std::mutex serial_, mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  Job job_;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
  int64_t helpers_ = 0, busy_ = 0;
  uint64_t generation_ = 0;
};

// Never destroyed: its threads wait until the process ends. A forked child has none of the
// parent's threads, so it starts a pool of its own (and leaves the OpenMP runtime's alone).
Pool* pool = nullptr;
bool forked_child = false;
std::once_flag fork_once;

void watch_fork() {
  std::call_once(fork_once, [] {
    pthread_atfork(nullptr, nullptr, [] {
      pool = nullptr;
      forked_child = true;
    });
  });
}

Pool& the_pool() {
  watch_fork();
  static std::mutex creating;
  std::lock_guard<std::mutex> lock(creating);
  if (pool == nullptr) pool = new Pool;
  return *pool;
}

}  // namespace

// ---------------------------------------------------------------------------- torch's threads

// torch runs its intra-op work on an OpenMP runtime (ATen's parallel backend; the libgomp its wheel
// ships). Its threads spin for a while after each parallel region, so a second pool's threads
// started right after a torch op find the cores taken: bitk's kernels then ran on one core. When
// an OpenMP runtime is already loaded in the process (GNU libgomp, or LLVM/Intel's, which export
// the same entry point), the chunks run on its threads instead, torch's own team: found by
// dl_iterate_phdr, opened with RTLD_NOLOAD (the instance already loaded, never a second one).
namespace {

using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);

int find_openmp(struct dl_phdr_info* info, size_t, void* out) {
  const char* name = info->dlpi_name;
  if (name == nullptr || *name == '\0') return 0;
  if (!std::strstr(name, "libgomp") && !std::strstr(name, "libiomp") && !std::strstr(name, "libomp")) return 0;
  void* handle = dlopen(name, RTLD_NOW | RTLD_NOLOAD);
  if (handle == nullptr) return 0;
  *static_cast<GompParallel*>(out) = reinterpret_cast<GompParallel>(dlsym(handle, "GOMP_parallel"));
  return *static_cast<GompParallel*>(out) != nullptr;
}


// GOMP_parallel of the OpenMP runtime loaded in this process, or null. Looked up at every call
// until found (torch may be imported after bitk's extension), then kept.
GompParallel openmp_runtime() {
  static std::atomic<GompParallel> found{nullptr};
  watch_fork();
  if (forked_child) return nullptr;
  GompParallel fn = found.load(std::memory_order_acquire);
  if (fn == nullptr) {
    dl_iterate_phdr(find_openmp, &fn);
    if (fn != nullptr) found.store(fn, std::memory_order_release);
  }
  return fn;
}

struct OpenmpJob {
  OpenmpJob(ChunkFn chunk_, void* context_, int64_t n_, int64_t size_, int64_t chunks_)
      : chunk(chunk_), context(context_), n(n_), size(size_), chunks(chunks_) {}
  ChunkFn chunk;
  void* context;
  int64_t n, size, chunks;
  std::atomic<int64_t> next{0};
  std::mutex mutex;
  std::exception_ptr error;
};

void openmp_body(void* data) {
  auto* job = static_cast<OpenmpJob*>(data);
  const bool outer = in_chunk;
  in_chunk = true;
  for (int64_t i = job->next.fetch_add(1); i < job->chunks; i = job->next.fetch_add(1)) {
    try {
      job->chunk(job->context, i, job->n, job->size);
    } catch (...) {
      std::lock_guard<std::mutex> lock(job->mutex);
      if (!job->error) job->error = std::current_exception();
    }
  }
  in_chunk = outer;
}

}  // namespace

void run_chunks(int64_t chunks, ChunkFn chunk, void* context, int64_t n, int64_t size) {
  if (chunks <= 1 || in_chunk) {
    for (int64_t i = 0; i < chunks; ++i) chunk(context, i, n, size);
    return;
  }
  if (const GompParallel parallel = openmp_runtime()) {
    OpenmpJob job(chunk, context, n, size, chunks);
    parallel(openmp_body, &job, unsigned(chunks), 0);  // the caller is thread 0 of the team
    if (job.error) std::rethrow_exception(job.error);
    return;
  }
  the_pool().run(chunks, chunk, context, n, size);
}

std::atomic<int>& requested_threads() {
  static std::atomic<int> count{0};
  return count;
}

const char* cpu_kernel_name(CpuKernel kernel) {
  switch (kernel) {
    case CpuKernel::kAvx2:
      return "avx2";
    case CpuKernel::kAvxVnni:
      return "avx_vnni";
    case CpuKernel::kAvx512Vnni:
      return "avx512_vnni";
    default:
      return "scalar";
  }
}

std::vector<std::string> supported_cpu_kernels() {
  std::vector<std::string> names;
  for (CpuKernel k : kAll)
    if (supported(k)) names.emplace_back(cpu_kernel_name(k));
  return names;
}

CpuKernel cpu_kernel() { return CpuKernel(chosen().load(std::memory_order_relaxed)); }

void set_cpu_kernel(const std::string& name) {
  if (name == "auto") {
    chosen().store(int(from_environment()));
    return;
  }
  const int k = parse(name);
  if (k == kNone)
    throw std::invalid_argument("unknown CPU kernel '" + name +
                                "'; expected auto, scalar, avx2, avx_vnni or avx512_vnni");
  if (!supported(CpuKernel(k)))
    throw std::invalid_argument("this CPU cannot run the '" + name + "' kernels (it supports " + [] {
      std::string list;
      for (const auto& n : supported_cpu_kernels()) list += (list.empty() ? "" : ", ") + n;
      return list;
    }() + ")");
  chosen().store(k);
}

#if defined(BITK_HAVE_X86_KERNELS)
#define BITK_CALL(fn, ...)                                   \
  switch (cpu_kernel()) {                                    \
    case CpuKernel::kAvx512Vnni:                             \
      return isa_avx512_vnni::fn(__VA_ARGS__);               \
    case CpuKernel::kAvxVnni:                                \
    case CpuKernel::kAvx2:                                   \
      return isa_avx2::fn(__VA_ARGS__);                      \
    default:                                                 \
      return isa_scalar::fn(__VA_ARGS__);                    \
  }
#else
#define BITK_CALL(fn, ...) return isa_scalar::fn(__VA_ARGS__);
#endif
// The GEMMs, which the avx_vnni variant has builds of its own.
#if defined(BITK_HAVE_AVX_VNNI)
#define BITK_CALL_GEMM(fn, ...)                                                            \
  if (cpu_kernel() == CpuKernel::kAvxVnni) return isa_avx_vnni::fn(__VA_ARGS__);          \
  BITK_CALL(fn, __VA_ARGS__)
#else
#define BITK_CALL_GEMM(fn, ...) BITK_CALL(fn, __VA_ARGS__)
#endif

I2SLayout parse_i2s_layout(const std::string& name) { return isa_scalar::parse_i2s_layout(name); }
double abs_sum(const float* w, int64_t n) { BITK_CALL(abs_sum, w, n) }
float ternarize(const float* w, int64_t rows, int64_t cols, int8_t* codes) { BITK_CALL(ternarize, w, rows, cols, codes) }
float ternarize_bf16(const uint16_t* w, int64_t rows, int64_t cols, int8_t* codes) {
  BITK_CALL(ternarize_bf16, w, rows, cols, codes)
}
void pack_i2s(const int8_t* codes, int64_t rows, int64_t cols, float scale, I2SLayout layout, uint8_t* out) {
  BITK_CALL(pack_i2s, codes, rows, cols, scale, layout, out)
}
float unpack_i2s(const uint8_t* data, int64_t rows, int64_t cols, I2SLayout layout, int8_t* codes) {
  BITK_CALL(unpack_i2s, data, rows, cols, layout, codes)
}
void quantize_i2s(const float* w, int64_t rows, int64_t cols, I2SLayout layout, uint8_t* out) {
  BITK_CALL(quantize_i2s, w, rows, cols, layout, out)
}
void dequantize_i2s(const uint8_t* data, int64_t rows, int64_t cols, I2SLayout layout, float* out) {
  BITK_CALL(dequantize_i2s, data, rows, cols, layout, out)
}
void quantize_tq2_0(const float* w, int64_t rows, int64_t cols, uint8_t* out) {
  BITK_CALL(quantize_tq2_0, w, rows, cols, out)
}
void dequantize_tq2_0(const uint8_t* data, int64_t rows, int64_t cols, float* out) {
  BITK_CALL(dequantize_tq2_0, data, rows, cols, out)
}
void quantize_tq1_0(const float* w, int64_t rows, int64_t cols, uint8_t* out) {
  BITK_CALL(quantize_tq1_0, w, rows, cols, out)
}
void dequantize_tq1_0(const uint8_t* data, int64_t rows, int64_t cols, float* out) {
  BITK_CALL(dequantize_tq1_0, data, rows, cols, out)
}
uint16_t float_to_half(float f) { return isa_scalar::float_to_half(f); }
float half_to_float(uint16_t h) { return isa_scalar::half_to_float(h); }

int64_t ternary_gemm_packed_size(int64_t n, int64_t k) { return isa_scalar::ternary_gemm_packed_size(n, k); }
void ternary_gemm_pack(const int8_t* codes, int64_t n, int64_t k, uint8_t* packed) {
  BITK_CALL(ternary_gemm_pack, codes, n, k, packed)
}
void ternary_gemm_pack_transposed(const int8_t* codes, int64_t n, int64_t k, uint8_t* packed) {
  BITK_CALL(ternary_gemm_pack_transposed, codes, n, k, packed)
}
void ternary_gemm_rows(const int8_t* xq, const float* factor, int64_t m, int64_t k, const uint8_t* packed, int64_t n,
                       float* y) {
  BITK_CALL_GEMM(ternary_gemm_rows, xq, factor, m, k, packed, n, y)
}
void ternary_gemm(const int8_t* xq, const float* s, int64_t m, int64_t k, const uint8_t* packed, int64_t n,
                  float gamma, float* y) {
  BITK_CALL_GEMM(ternary_gemm, xq, s, m, k, packed, n, gamma, y)
}
void ternary_gemm_divide(const int8_t* xq, const float* s, int64_t m, int64_t k, const uint8_t* packed, int64_t n,
                         float scale, float* y) {
  BITK_CALL_GEMM(ternary_gemm_divide, xq, s, m, k, packed, n, scale, y)
}
void ternary_gemm_int32(const int8_t* xq, int64_t m, int64_t k, const uint8_t* packed, int64_t n, int32_t* acc) {
  BITK_CALL_GEMM(ternary_gemm_int32, xq, m, k, packed, n, acc)
}
void ternary_scale(const int8_t* codes, int64_t count, float gamma, float* out) {
  BITK_CALL(ternary_scale, codes, count, gamma, out)
}
int64_t i2s_gemm_weight_bytes(int64_t n, int64_t k) { return isa_scalar::i2s_gemm_weight_bytes(n, k); }
void i2s_gemm_divide(const int8_t* xq, const float* s, int64_t m, int64_t k, const uint8_t* w, int64_t n, float scale,
                     float* y) {
  BITK_CALL_GEMM(i2s_gemm_divide, xq, s, m, k, w, n, scale, y)
}
void i2s_gemm_int32(const int8_t* xq, int64_t m, int64_t k, const uint8_t* w, int64_t n, int32_t* acc) {
  BITK_CALL_GEMM(i2s_gemm_int32, xq, m, k, w, n, acc)
}
void quantize_activations(const float* x, int64_t m, int64_t k, ActivationScale mode, int8_t* xq, float* s) {
  BITK_CALL(quantize_activations, x, m, k, mode, xq, s)
}
void int8_to_bf16(const int8_t* src, int64_t count, uint16_t* out) { BITK_CALL(int8_to_bf16, src, count, out) }
void float_to_bf16(const float* src, const float* divisor, int64_t rows, int64_t cols, uint16_t* out) {
  BITK_CALL(float_to_bf16, src, divisor, rows, cols, out)
}
void bf16_to_float(const uint16_t* src, int64_t count, bool scale_it, float scale, float* out) {
  BITK_CALL(bf16_to_float, src, count, scale_it, scale, out)
}
void quantize_gradient_rows(const float* g, int64_t rows, int64_t cols, int8_t* q, float* step) {
  BITK_CALL(quantize_gradient_rows, g, rows, cols, q, step)
}
void quantize_gradient_columns(const float* src, const float* factor, int64_t rows, int64_t cols, int8_t* q,
                               float* step) {
  BITK_CALL(quantize_gradient_columns, src, factor, rows, cols, q, step)
}
void dequantize_int32_rows(int32_t* acc, const float* step, int64_t rows, int64_t cols) {
  BITK_CALL(dequantize_int32_rows, acc, step, rows, cols)
}
void rms_norm_apply(const float* x, const float* rms, const float* w, int64_t rows, int64_t cols, float* y) {
  BITK_CALL(rms_norm_apply, x, rms, w, rows, cols, y)
}
void rms_norm_backward_terms(const float* g, const float* x, const float* rms, const float* w, int64_t rows,
                             int64_t cols, float* t, float* p) {
  BITK_CALL(rms_norm_backward_terms, g, x, rms, w, rows, cols, t, p)
}
void rms_norm_backward_input(const float* g, const float* x, const float* rms, const float* w, const float* coef,
                             int64_t rows, int64_t cols, float* gd, float* gs) {
  BITK_CALL(rms_norm_backward_input, g, x, rms, w, coef, rows, cols, gd, gs)
}
void relu2_gate(const float* gate, const float* up, int64_t count, float* h) {
  BITK_CALL(relu2_gate, gate, up, count, h)
}
void relu2_gate_backward(const float* gate, const float* up, const float* gh, int64_t count, float* ggate, float* gup) {
  BITK_CALL(relu2_gate_backward, gate, up, gh, count, ggate, gup)
}

}  // namespace bitk
