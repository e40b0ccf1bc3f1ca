// Implementation of ternary_gemm.h. Both paths compute acc = sum_k c[n, k] x[m, k] - sum_k x[m, k]
// exactly in integers (c = code + 1) and apply the same float32 epilogue, so AVX2 and scalar builds,
// and every thread count, give bit-identical results.
//
// AVX2 path (GEMM blocking as in BLIS, register tile 6 rows x 16 columns):
//  - threads take (row block, 4 weight panels) units; a row block's activations (~384 KiB) stay in
//    L2 while the thread walks its panels, and each 1024-k slice of a 16-row panel is unpacked from
//    2 bits to bytes into a 16 KiB L1 buffer once and reused by every 6-row tile of the block;
//  - the packed layout puts columns 16 g + 4 t + q (q = 0..3) of step t at one shift (2 t), so the
//    unpacked step holds 4 consecutive k per weight row and the activations are read in place;
//  - the micro-kernel (inline asm: GCC spills the 12 accumulators when written with intrinsics)
//    keeps a 6 x 16 tile of int16 accumulators in ymm0..ymm11 for up to 64 steps, then widens them
//    with vpmaddwd into the tile's int32 sums in memory.
#include "ternary_gemm.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "gemm_epilogue.h"
#include "parallel.h"

// Compiled once per instruction set (CMakeLists.txt: scalar, AVX2, AVX-512 VNNI); the macros of
// the build's -m flags pick the kernels, and cpu_dispatch.cpp calls the build the CPU runs.
#if defined(__GNUC__) && defined(__x86_64__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define BITK_GEMM_AVX2 1
#define BITK_GEMM_VNNI512 1
#elif defined(__AVX2__) && defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define BITK_GEMM_AVX2 1
#if defined(__AVXVNNI__)  // the avx_vnni build: the AVX2 kernels with vpdpbusd on ymm registers
#define BITK_GEMM_VNNI256 1
#include "vnni256.h"
#endif
#endif

namespace bitk {
namespace BITK_ISA {
namespace {

constexpr int64_t kPanel = 16;                        // weight rows (output columns) per panel
constexpr int64_t kGroup = 16;                        // k values per packed group
constexpr int64_t kGroupBytes = kPanel * kGroup / 4;  // 64: one group of one panel
constexpr int64_t kMaxN = int64_t(1) << 40;           // keeps every size product far from overflow

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_sizes(const char* what, int64_t m, int64_t n, int64_t k) {
  if (m < 0 || n < 0 || k < 0)
    throw std::invalid_argument(std::string(what) + ": negative size (m=" + std::to_string(m) +
                                ", n=" + std::to_string(n) + ", k=" + std::to_string(k) + ")");
  if (k > kTernaryGemmMaxK)
    throw std::invalid_argument(std::string(what) + ": k=" + std::to_string(k) + " exceeds the supported " +
                                std::to_string(kTernaryGemmMaxK) + " (int32 accumulators)");
  if (m > kMaxN || n > kMaxN) throw std::invalid_argument(std::string(what) + ": size too large");
}

// c = code + 1 of codes[k0 .. k0 + 16) (past `k`: 0) as the packed group's four bytes, byte q
// holding column k0 + 4 t + q in bits 2 t.
uint32_t pack_group_scalar(const int8_t* row, int64_t k0, int64_t k) {
  uint32_t word = 0;
  for (int q = 0; q < 4; ++q)
    for (int t = 0; t < 4; ++t) {
      const int64_t kk = k0 + 4 * t + q;
      const uint32_t c = kk < k ? uint32_t(row[kk] + 1) & 3u : 0u;
      word |= c << (8 * q + 2 * t);
    }
  return word;
}

void store_word(uint8_t* dst, uint32_t word) { std::memcpy(dst, &word, 4); }

// ---------------------------------------------------------------------------- scalar path

#if !defined(BITK_GEMM_AVX2)

void pack_panels(const int8_t* codes, int64_t n, int64_t k, uint8_t* packed) {
  const int64_t groups = ceil_div(k, kGroup), panels = ceil_div(n, kPanel);
  parallel_for(panels, kPanel * std::max<int64_t>(k, 1), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t r = 0; r < kPanel; ++r) {
        const int64_t row = p * kPanel + r;
        for (int64_t g = 0; g < groups; ++g)
          store_word(packed + (p * groups + g) * kGroupBytes + 4 * r,
                     row < n ? pack_group_scalar(codes + row * k, g * kGroup, k) : 0u);
      }
  });
}

template <class Store>
void gemm(const int8_t* xq, int64_t m, int64_t k, const uint8_t* packed, int64_t n, const Store& store) {
  const int64_t groups = ceil_div(k, kGroup), panels = ceil_div(n, kPanel);
  std::vector<int32_t> xsum(m);
  for (int64_t i = 0; i < m; ++i) {
    int32_t total = 0;
    for (int64_t kk = 0; kk < k; ++kk) total += xq[i * k + kk];
    xsum[i] = total;
  }
  parallel_for(panels, m * kPanel * std::max<int64_t>(k, 1) / 32, [&](int64_t begin, int64_t end) {
    std::vector<int8_t> c(kPanel * k);  // c = code + 1 of the panel, row-major
    for (int64_t p = begin; p < end; ++p) {
      const int64_t cols = std::min(kPanel, n - p * kPanel);
      for (int64_t r = 0; r < cols; ++r)
        for (int64_t kk = 0; kk < k; ++kk) {
          const uint8_t byte = packed[(p * groups + kk / kGroup) * kGroupBytes + 4 * r + kk % 4];
          c[r * k + kk] = int8_t((byte >> (2 * (kk % kGroup / 4))) & 3);
        }
      int32_t raw[kPanel];
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t r = 0; r < cols; ++r) {
          int32_t total = 0;
          for (int64_t kk = 0; kk < k; ++kk) total += int32_t(c[r * k + kk]) * xq[i * k + kk];
          raw[r] = total;
        }
        store(i, p * kPanel, cols, raw, xsum[i]);
      }
    }
  });
}

#else  // BITK_GEMM_AVX2

// ---------------------------------------------------------------------------- AVX2: packing

// 128 codes of one row -> the packed words of its 8 groups, in group order. Byte q of a group is
// sum_t (code_t + 1) 4^t = 85 + sum_t code_t 4^t with code_t = column 4 t + q: vpmaddubsw (u8 place
// values x s8 codes) and vpmaddwd give sum_t code_t 4^t in [-85, 85]; 85 is added to the bytes once.
inline __m256i pack_row_128(const int8_t* src) {
  const __m256i place = _mm256_set1_epi32(0x40100401);  // bytes 1, 4, 16, 64
  const __m256i ones16 = _mm256_set1_epi16(1);
  // Within each group, byte 4 q + t <- code 4 t + q: then every 4 adjacent bytes form one packed byte.
  const __m256i order = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                         0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m256i v[4];
  for (int i = 0; i < 4; ++i) {
    const __m256i codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32 * i));
    // int32 lane l: byte l % 4 of group 2 i + l / 4.
    v[i] = _mm256_madd_epi16(_mm256_maddubs_epi16(place, _mm256_shuffle_epi8(codes, order)), ones16);
  }
  // packs work per 128-bit lane: the words come out as groups 0, 2, 4, 6 | 1, 3, 5, 7.
  const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
  return _mm256_add_epi8(_mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)),
                         _mm256_set1_epi8(85));
}

void pack_panels(const int8_t* codes, int64_t n, int64_t k, uint8_t* packed) {
  const int64_t groups = ceil_div(k, kGroup), panels = ceil_div(n, kPanel);
  const int64_t vector_groups = k / 128 * 8;  // groups packed 8 at a time
  parallel_for(panels, kPanel * std::max<int64_t>(k, 1), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      uint8_t* dst = packed + p * groups * kGroupBytes;
      // Four rows at a time: a 4 x 8 transpose of their words gives 16-byte stores.
      for (int64_t r = 0; r < kPanel; r += 4) {
        const int64_t row = p * kPanel + r;
        for (int64_t g = 0; g < vector_groups; g += 8) {
          __m256i w[4];
          for (int i = 0; i < 4; ++i)
            w[i] = row + i < n ? pack_row_128(codes + (row + i) * k + g * kGroup) : _mm256_setzero_si256();
          const __m256i t0 = _mm256_unpacklo_epi32(w[0], w[1]), t1 = _mm256_unpackhi_epi32(w[0], w[1]);
          const __m256i t2 = _mm256_unpacklo_epi32(w[2], w[3]), t3 = _mm256_unpackhi_epi32(w[2], w[3]);
          const __m256i u[4] = {_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2),
                                _mm256_unpacklo_epi64(t1, t3), _mm256_unpackhi_epi64(t1, t3)};
          for (int j = 0; j < 4; ++j) {  // u[j] = groups g + j | g + 4 + j
            uint8_t* at = dst + (g + j) * kGroupBytes + 4 * r;
            _mm_storeu_si128(reinterpret_cast<__m128i*>(at), _mm256_castsi256_si128(u[j]));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(at + 4 * kGroupBytes), _mm256_extracti128_si256(u[j], 1));
          }
        }
        for (int i = 0; i < 4; ++i)
          for (int64_t g = vector_groups; g < groups; ++g)
            store_word(dst + g * kGroupBytes + 4 * (r + i),
                       row + i < n ? pack_group_scalar(codes + (row + i) * k, g * kGroup, k) : 0u);
      }
    }
  });
}

// ---------------------------------------------------------------------------- AVX2: micro-kernel

constexpr int64_t kTileRows = 6;      // activation rows per register tile
constexpr int64_t kChunkSteps = 64;   // int16 accumulation length, see below
constexpr int64_t kBlockGroups = 64;  // k slice of 1024: its unpacked panel is 16 KiB (L1)
constexpr int64_t kStepBytes = 64;    // unpacked weights of one step: 16 columns x 4 k
constexpr int64_t kXBlockBytes = int64_t(384) << 10;  // activation bytes kept in L2 (512 KiB) per row block
constexpr int64_t kUnitPanels = 4;    // panels per work unit: 64 output columns

// No overflow, for any k: one vpmaddubsw lane is c0 x0 + c1 x1 with c in {0, 1, 2} (u8) and x in
// [-128, 127] (s8), so it lies in [-512, 508] and vpmaddubsw's int16 saturation never applies. An
// int16 accumulator sums at most kChunkSteps = 64 such lanes: it stays in [-64 * 512, 64 * 508] =
// [-32768, 32512], inside int16, so vpaddw never wraps. vpmaddwd with ones then adds lane pairs
// into int32 exactly; every int32 sum lies in [-256 k, 254 k], inside int32 for k <= 2^23 =
// kTernaryGemmMaxK, and acc = sum c x - sum x lies in [-127 k, 128 k]. So the int32 results are the
// integer sums.
static_assert(kChunkSteps * 512 <= 32768 && kChunkSteps * 508 <= 32767, "int16 accumulators could overflow");
static_assert(256 * kTernaryGemmMaxK <= (int64_t(1) << 31) && 254 * kTernaryGemmMaxK < (int64_t(1) << 31),
              "int32 accumulators could overflow");

// Register use: ymm0..ymm11 accumulators (row i: ymm(2i), ymm(2i+1) = columns 0..7, 8..15),
// ymm12/ymm13 the step's weights, ymm14 a product, ymm15 the broadcast activations (then a product,
// then the int16 ones of vpmaddwd). Row i is read at x + i * stride through s1 = stride,
// s3 = 3 stride and s5 = 5 stride; the step loop is unrolled 4 times (chunks are whole groups).
// Three kinds of step (K): Madd, the AVX2 one above (int16 accumulators widened at the end of a
// chunk); Vex and Evex, AVX-VNNI's `vpdpbusd` on ymm registers in its VEX encoding, or the same
// instruction in the EVEX encoding of AVX-512 VNNI + VL (what the avx_vnni build runs on a CPU that
// has those but no AVX-VNNI): int32 accumulators, one instruction per 8 columns x 4 k.
#define BITK_ZERO(a0, a1) "vpxor %%xmm" #a0 ", %%xmm" #a0 ", %%xmm" #a0 "\n\t" \
                          "vpxor %%xmm" #a1 ", %%xmm" #a1 ", %%xmm" #a1 "\n\t"
#define BITK_ROW_Madd(xoff, base, a0, a1)              \
  "vpbroadcastd " #xoff base ", %%ymm15\n\t"           \
  "vpmaddubsw %%ymm15, %%ymm12, %%ymm14\n\t"           \
  "vpaddw %%ymm14, %%ymm" #a0 ", %%ymm" #a0 "\n\t"     \
  "vpmaddubsw %%ymm15, %%ymm13, %%ymm15\n\t"           \
  "vpaddw %%ymm15, %%ymm" #a1 ", %%ymm" #a1 "\n\t"
#define BITK_ROW_Vex(xoff, base, a0, a1)               \
  "vpbroadcastd " #xoff base ", %%ymm15\n\t"           \
  "%{vex%} vpdpbusd %%ymm15, %%ymm12, %%ymm" #a0 "\n\t" \
  "%{vex%} vpdpbusd %%ymm15, %%ymm13, %%ymm" #a1 "\n\t"
#define BITK_ROW_Evex(xoff, base, a0, a1)                \
  "vpbroadcastd " #xoff base ", %%ymm15\n\t"             \
  "%{evex%} vpdpbusd %%ymm15, %%ymm12, %%ymm" #a0 "\n\t" \
  "%{evex%} vpdpbusd %%ymm15, %%ymm13, %%ymm" #a1 "\n\t"
#define BITK_ONES_Madd "vpcmpeqw %%ymm15, %%ymm15, %%ymm15\n\t" "vpsrlw $15, %%ymm15, %%ymm15\n\t"
#define BITK_ONES_Vex
#define BITK_ONES_Evex
#define BITK_WIDEN_Madd(coff, a)                       \
  "vpmaddwd %%ymm15, %%ymm" #a ", %%ymm" #a "\n\t"     \
  "vpaddd " #coff "(%[c]), %%ymm" #a ", %%ymm" #a "\n\t" \
  "vmovdqu %%ymm" #a ", " #coff "(%[c])\n\t"
#define BITK_WIDEN_Vex(coff, a)                        \
  "vpaddd " #coff "(%[c]), %%ymm" #a ", %%ymm" #a "\n\t" \
  "vmovdqu %%ymm" #a ", " #coff "(%[c])\n\t"
#define BITK_WIDEN_Evex(coff, a) BITK_WIDEN_Vex(coff, a)
#define BITK_WIDEN_ROW(K, coff0, coff1, a0, a1) BITK_WIDEN_##K(coff0, a0) BITK_WIDEN_##K(coff1, a1)

#define BITK_ZERO_1 BITK_ZERO(0, 1)
#define BITK_ZERO_2 BITK_ZERO_1 BITK_ZERO(2, 3)
#define BITK_ZERO_3 BITK_ZERO_2 BITK_ZERO(4, 5)
#define BITK_ZERO_4 BITK_ZERO_3 BITK_ZERO(6, 7)
#define BITK_ZERO_5 BITK_ZERO_4 BITK_ZERO(8, 9)
#define BITK_ZERO_6 BITK_ZERO_5 BITK_ZERO(10, 11)
#define BITK_ROWS_1(K, o) BITK_ROW_##K(o, "(%[x])", 0, 1)
#define BITK_ROWS_2(K, o) BITK_ROWS_1(K, o) BITK_ROW_##K(o, "(%[x],%[s1],1)", 2, 3)
#define BITK_ROWS_3(K, o) BITK_ROWS_2(K, o) BITK_ROW_##K(o, "(%[x],%[s1],2)", 4, 5)
#define BITK_ROWS_4(K, o) BITK_ROWS_3(K, o) BITK_ROW_##K(o, "(%[x],%[s3],1)", 6, 7)
#define BITK_ROWS_5(K, o) BITK_ROWS_4(K, o) BITK_ROW_##K(o, "(%[x],%[s1],4)", 8, 9)
#define BITK_ROWS_6(K, o) BITK_ROWS_5(K, o) BITK_ROW_##K(o, "(%[x],%[s5],1)", 10, 11)
#define BITK_STEP(R, K, w0, w1, o) \
  "vmovdqa " #w0 "(%[w]), %%ymm12\n\t" "vmovdqa " #w1 "(%[w]), %%ymm13\n\t" BITK_ROWS_##R(K, o)
#define BITK_WIDEN_1(K) BITK_WIDEN_ROW(K, 0, 32, 0, 1)
#define BITK_WIDEN_2(K) BITK_WIDEN_1(K) BITK_WIDEN_ROW(K, 64, 96, 2, 3)
#define BITK_WIDEN_3(K) BITK_WIDEN_2(K) BITK_WIDEN_ROW(K, 128, 160, 4, 5)
#define BITK_WIDEN_4(K) BITK_WIDEN_3(K) BITK_WIDEN_ROW(K, 192, 224, 6, 7)
#define BITK_WIDEN_5(K) BITK_WIDEN_4(K) BITK_WIDEN_ROW(K, 256, 288, 8, 9)
#define BITK_WIDEN_6(K) BITK_WIDEN_5(K) BITK_WIDEN_ROW(K, 320, 352, 10, 11)

// c[i][0..16) += sum over `steps` (4, 8, .., 64) steps s of w[s] (32-byte aligned, kStepBytes each)
// times x[i * stride + 4 s .. + 3], for the R rows of a tile.
#define BITK_TILE_CHUNK(R, K)                                                                      \
  const int64_t s1 = stride, s3 = 3 * stride, s5 = 5 * stride;                                     \
  asm volatile(BITK_ZERO_##R                                                                       \
               "1:\n\t"                                                                            \
               BITK_STEP(R, K, 0, 32, 0) BITK_STEP(R, K, 64, 96, 4)                                \
               BITK_STEP(R, K, 128, 160, 8) BITK_STEP(R, K, 192, 224, 12)                          \
               "add $256, %[w]\n\t"                                                                \
               "add $16, %[x]\n\t"                                                                 \
               "sub $4, %[steps]\n\t"                                                              \
               "jnz 1b\n\t"                                                                        \
               BITK_ONES_##K                                                                       \
               BITK_WIDEN_##R(K)                                                                   \
               : [w] "+r"(w), [x] "+r"(x), [steps] "+r"(steps)                                     \
               : [c] "r"(c), [s1] "r"(s1), [s3] "r"(s3), [s5] "r"(s5)                              \
               : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",   \
                 "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15")

// One row (decoding a token) with vpdpbusd: the 4 unrolled steps go to 4 accumulator pairs, since
// a chain of dependent vpdpbusd on one pair would wait on their latency; added up at the end.
#define BITK_TILE_CHUNK_ONE(K)                                                                     \
  asm volatile(BITK_ZERO(0, 1) BITK_ZERO(2, 3) BITK_ZERO(4, 5) BITK_ZERO(6, 7)                     \
               "1:\n\t"                                                                            \
               "vmovdqa 0(%[w]), %%ymm12\n\t" "vmovdqa 32(%[w]), %%ymm13\n\t"                      \
               BITK_ROW_##K(0, "(%[x])", 0, 1)                                                     \
               "vmovdqa 64(%[w]), %%ymm12\n\t" "vmovdqa 96(%[w]), %%ymm13\n\t"                     \
               BITK_ROW_##K(4, "(%[x])", 2, 3)                                                     \
               "vmovdqa 128(%[w]), %%ymm12\n\t" "vmovdqa 160(%[w]), %%ymm13\n\t"                   \
               BITK_ROW_##K(8, "(%[x])", 4, 5)                                                     \
               "vmovdqa 192(%[w]), %%ymm12\n\t" "vmovdqa 224(%[w]), %%ymm13\n\t"                   \
               BITK_ROW_##K(12, "(%[x])", 6, 7)                                                    \
               "add $256, %[w]\n\t"                                                                \
               "add $16, %[x]\n\t"                                                                 \
               "sub $4, %[steps]\n\t"                                                              \
               "jnz 1b\n\t"                                                                        \
               "vpaddd %%ymm2, %%ymm0, %%ymm0\n\t" "vpaddd %%ymm3, %%ymm1, %%ymm1\n\t"              \
               "vpaddd %%ymm6, %%ymm4, %%ymm4\n\t" "vpaddd %%ymm7, %%ymm5, %%ymm5\n\t"              \
               "vpaddd %%ymm4, %%ymm0, %%ymm0\n\t" "vpaddd %%ymm5, %%ymm1, %%ymm1\n\t"              \
               BITK_WIDEN_1(K)                                                                     \
               : [w] "+r"(w), [x] "+r"(x), [steps] "+r"(steps)                                     \
               : [c] "r"(c)                                                                        \
               : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",   \
                 "xmm12", "xmm13", "xmm15")

enum StepKind { kMadd, kVex, kEvex };

template <int R, int K>
void tile_chunk(const uint8_t* w, const int8_t* x, int64_t stride, int64_t steps, int32_t* c);
#define BITK_TILE_CHUNK_FN(R, K)                                                                   \
  template <>                                                                                      \
  void tile_chunk<R, k##K>(const uint8_t* w, const int8_t* x, int64_t stride, int64_t steps, int32_t* c) { \
    BITK_TILE_CHUNK(R, K);                                                                         \
  }
#define BITK_TILE_CHUNK_FNS(K) \
  BITK_TILE_CHUNK_FN(1, K) BITK_TILE_CHUNK_FN(2, K) BITK_TILE_CHUNK_FN(3, K) \
  BITK_TILE_CHUNK_FN(4, K) BITK_TILE_CHUNK_FN(5, K) BITK_TILE_CHUNK_FN(6, K)
#if defined(BITK_GEMM_VNNI256)
#define BITK_TILE_CHUNK_ONE_FN(K)                                                                  \
  template <>                                                                                      \
  void tile_chunk<1, k##K>(const uint8_t* w, const int8_t* x, int64_t, int64_t steps, int32_t* c) { \
    BITK_TILE_CHUNK_ONE(K);                                                                        \
  }
BITK_TILE_CHUNK_ONE_FN(Vex)
BITK_TILE_CHUNK_ONE_FN(Evex)
#define BITK_TILE_CHUNK_FNS_2_6(K)                                                     \
  BITK_TILE_CHUNK_FN(2, K) BITK_TILE_CHUNK_FN(3, K) BITK_TILE_CHUNK_FN(4, K) \
  BITK_TILE_CHUNK_FN(5, K) BITK_TILE_CHUNK_FN(6, K)
BITK_TILE_CHUNK_FNS_2_6(Vex)
BITK_TILE_CHUNK_FNS_2_6(Evex)
#else
BITK_TILE_CHUNK_FNS(Madd)
#endif

// One tile: `steps` (a multiple of 4) steps of w against rows x0 + i * stride, in chunks of at
// most kChunkSteps.
template <int R, int K>
void tile_steps(const uint8_t* w, const int8_t* x0, int64_t stride, int64_t steps, int32_t* c) {
  for (int64_t s = 0; s < steps; s += kChunkSteps)
    tile_chunk<R, K>(w + s * kStepBytes, x0 + 4 * s, stride, std::min(kChunkSteps, steps - s), c);
}

template <int K>
void run_tile_kind(int64_t rows, const uint8_t* w, const int8_t* x0, int64_t stride, int64_t steps, int32_t* c) {
  switch (rows) {
    case 1: return tile_steps<1, K>(w, x0, stride, steps, c);
    case 2: return tile_steps<2, K>(w, x0, stride, steps, c);
    case 3: return tile_steps<3, K>(w, x0, stride, steps, c);
    case 4: return tile_steps<4, K>(w, x0, stride, steps, c);
    case 5: return tile_steps<5, K>(w, x0, stride, steps, c);
    default: return tile_steps<6, K>(w, x0, stride, steps, c);
  }
}

void run_tile(int64_t rows, const uint8_t* w, const int8_t* x0, int64_t stride, int64_t steps, int32_t* c) {
  if (steps <= 0) return;
#if defined(BITK_GEMM_VNNI256)
  if (vnni256_evex()) return run_tile_kind<kEvex>(rows, w, x0, stride, steps, c);
  return run_tile_kind<kVex>(rows, w, x0, stride, steps, c);
#else
  return run_tile_kind<kMadd>(rows, w, x0, stride, steps, c);
#endif
}

// ---------------------------------------------------------------------------- AVX2: driver

// The 2-bit groups [g0, g0 + count) of one panel -> bytes c, kStepBytes per step: step t of a group
// is (bits >> 2 t) & 3, 16 weight rows x 4 consecutive k.
void unpack_panel(const uint8_t* src, int64_t count, uint8_t* dst) {
  const __m256i mask = _mm256_set1_epi8(3);
  for (int64_t g = 0; g < count; ++g, src += kGroupBytes, dst += 4 * kStepBytes) {
    for (int h = 0; h < 2; ++h) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32 * h));
      __m256i* out = reinterpret_cast<__m256i*>(dst + 32 * h);
      _mm256_store_si256(out, _mm256_and_si256(v, mask));
      _mm256_store_si256(out + 2, _mm256_and_si256(_mm256_srli_epi16(v, 2), mask));
      _mm256_store_si256(out + 4, _mm256_and_si256(_mm256_srli_epi16(v, 4), mask));
      _mm256_store_si256(out + 6, _mm256_and_si256(_mm256_srli_epi16(v, 6), mask));
    }
  }
}

template <class T>
struct AlignedBuffer {
  explicit AlignedBuffer(int64_t count)
      : data(static_cast<T*>(::operator new(sizeof(T) * size_t(std::max<int64_t>(count, 1)), std::align_val_t(64)))) {}
  ~AlignedBuffer() { ::operator delete(data, std::align_val_t(64)); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  T* data;
};

template <class Store>
void gemm(const int8_t* xq, int64_t m, int64_t k, const uint8_t* packed, int64_t n, const Store& store) {
  if (m == 0 || n == 0) return;
  const int64_t groups = ceil_div(k, kGroup), panels = ceil_div(n, kPanel);
  const int64_t full_groups = k / kGroup;  // read in place; a partial last group is copied, padded
  const int64_t tiles = ceil_div(m, kTileRows);

  // Row blocks of whole tiles whose activations fit the L2 budget. A unit is (row block, group of
  // kUnitPanels panels), row-block major, so a thread keeps its block's activations hot while it
  // walks the panels, and each output row gets 64 contiguous floats at a time. With several blocks,
  // their count is a multiple of the thread count and the tiles are spread evenly, so each thread
  // gets whole, equal blocks; one block (small m) is split by panels.
  const int64_t max_block_tiles = std::max<int64_t>(kXBlockBytes / (kTileRows * std::max<int64_t>(k, 1)), 1);
  int64_t blocks = ceil_div(tiles, max_block_tiles);
  if (blocks > 1) blocks = std::min(tiles, ceil_div(blocks, int64_t(max_threads())) * int64_t(max_threads()));
  const int64_t block_rows = std::min(m, ceil_div(tiles, blocks) * kTileRows);  // the largest block
  const int64_t panel_groups = ceil_div(panels, kUnitPanels);
  const int64_t unit_macs = block_rows * kUnitPanels * kPanel * std::max<int64_t>(k, 1);
  parallel_for(blocks * panel_groups, unit_macs / 32, [&](int64_t begin, int64_t end) {
    AlignedBuffer<uint8_t> w(kBlockGroups * 4 * kStepBytes);
    AlignedBuffer<int32_t> c(kUnitPanels * block_rows * kPanel);  // [panel][row][16] int32 sums
    std::vector<int32_t> xsum(static_cast<size_t>(block_rows));   // sum_k x of the block's rows
    alignas(64) int8_t tail[kTileRows * kGroup];  // the partial last group of a tile's rows, zero-padded
    for (int64_t u = begin, current = -1; u < end; ++u) {
      const int64_t block = u / panel_groups, p0 = u % panel_groups * kUnitPanels;
      const int64_t p1 = std::min(panels, p0 + kUnitPanels);
      const int64_t t0 = block * tiles / blocks, t1 = (block + 1) * tiles / blocks;
      const int64_t row0 = t0 * kTileRows, row1 = std::min(m, t1 * kTileRows);
      if (block != current) {  // also brings the block's activations into L2
        current = block;
        for (int64_t row = row0; row < row1; ++row) {
          int32_t total = 0;
          for (int64_t kk = 0; kk < k; ++kk) total += xq[row * k + kk];
          xsum[size_t(row - row0)] = total;
        }
      }
      std::memset(c.data, 0, sizeof(int32_t) * size_t(kUnitPanels * block_rows * kPanel));
      for (int64_t p = p0; p < p1; ++p) {
        int32_t* cp = c.data + (p - p0) * block_rows * kPanel;
        for (int64_t g0 = 0; g0 < groups; g0 += kBlockGroups) {
          const int64_t count = std::min(kBlockGroups, groups - g0);
          const int64_t in_place = std::min(g0 + count, full_groups) - g0;  // groups read from xq
          unpack_panel(packed + (p * groups + g0) * kGroupBytes, count, w.data);
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t row = t * kTileRows, rows = std::min(kTileRows, m - row);
            int32_t* ct = cp + (row - row0) * kPanel;
            run_tile(rows, w.data, xq + row * k + g0 * kGroup, k, 4 * in_place, ct);
            if (in_place < count) {  // the last group, past full_groups
              std::memset(tail, 0, sizeof tail);
              for (int64_t i = 0; i < rows; ++i)
                std::memcpy(tail + i * kGroup, xq + (row + i) * k + full_groups * kGroup, size_t(k % kGroup));
              run_tile(rows, w.data + 4 * in_place * kStepBytes, tail, kGroup, 4, ct);
            }
          }
        }
      }
      for (int64_t row = row0; row < row1; ++row)
        for (int64_t p = p0; p < p1; ++p)
          store(row, p * kPanel, std::min(kPanel, n - p * kPanel),
                c.data + ((p - p0) * block_rows + row - row0) * kPanel, xsum[size_t(row - row0)]);
    }
  });
}

#endif  // BITK_GEMM_AVX2

// ---------------------------------------------------------------------------- AVX-512 VNNI

#if defined(BITK_GEMM_VNNI512)

// vpdpbusd multiplies unsigned bytes by signed bytes and adds each group of four products into an
// int32 lane, without saturation. One unpacked step of a panel (16 weight rows x 4 consecutive k,
// byte 4 r + q = c of row r at k 4 t + q) is exactly one zmm of unsigned bytes whose int32 lane r
// belongs to output column r; the four activation bytes of a row at the same k, broadcast to all
// lanes, are the signed operand. So a step adds 16 columns' dot products of 4 k each, and the
// unpacking of a 64-byte packed group ((bits >> 2 t) & 3 for t = 0..3) happens in registers.
//
// Blocking: the activations are first copied into tiles of kVnniRows rows laid out step-major (the
// kVnniRows 4-byte words of one step are adjacent, zero-padded past m and k), so every broadcast is
// one memory operand at a constant offset; the micro-kernel keeps kVnniRows x 2 panels = 16 int32
// accumulators (zmm) over the whole of k: no intermediate widening, no overflow (every partial sum
// lies in [-256 k, 254 k], see kTernaryGemmMaxK). 8 x 2 keeps the multiplier busiest: measured on
// an AMD EPYC core (AVX-512 VNNI/BF16) with the panels in L1, 8 x 2, 6 x 2 and 4 x 4 tiles run ~230
// G int8 MACs/s, 12 x 2 (24 accumulators) ~190. Threads take (row block, panel chunk) units; a
// chunk's packed panels (k / 2 bytes each) stay in L1/L2 while the block's tiles pass over them.
constexpr int64_t kVnniRows = 8;         // activation rows per register tile
constexpr int64_t kVnniBlockTiles = 12;  // tiles per row block (96 rows)
constexpr int64_t kVnniChunkPairs = 4;   // panel pairs per unit at most (128 columns)

// The tiles of xq: tile t, step s (4 k), row i -> word (t * steps + s) * kVnniRows + i.
void pack_activation_tiles(const int8_t* xq, int64_t m, int64_t k, int64_t steps, int32_t* tiles, int32_t* xsum) {
  const int64_t count = ceil_div(m, kVnniRows);
  parallel_for(count, kVnniRows * std::max<int64_t>(k, 1), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      int32_t* dst = tiles + t * steps * kVnniRows;
      for (int64_t i = 0; i < kVnniRows; ++i) {
        const int64_t row = t * kVnniRows + i;
        if (row >= m) {
          for (int64_t s = 0; s < steps; ++s) dst[s * kVnniRows + i] = 0;
          continue;
        }
        const int8_t* src = xq + row * k;
        int32_t total = 0;
        for (int64_t kk = 0; kk < k; ++kk) total += src[kk];
        xsum[row] = total;
        const int64_t whole = k / 4;
        for (int64_t s = 0; s < whole; ++s) std::memcpy(dst + s * kVnniRows + i, src + 4 * s, 4);
        for (int64_t s = whole; s < steps; ++s) {
          int8_t word[4] = {0, 0, 0, 0};
          for (int64_t q = 0; q < 4 && 4 * s + q < k; ++q) word[q] = src[4 * s + q];
          std::memcpy(dst + s * kVnniRows + i, word, 4);
        }
      }
    }
  });
}

// acc[i][j] = sum over `groups` packed groups of panel j (w0, w1: its first group; P = 1 or 2
// panels) times the R tile rows of x (step-major words, kVnniRows per step).
template <int R, int P>
inline void vnni_tile(const uint8_t* w0, const uint8_t* w1, const int32_t* x, int64_t groups, __m512i (&acc)[R][P]) {
  const __m512i mask = _mm512_set1_epi8(3);
#pragma GCC unroll 12
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < P; ++j) acc[i][j] = _mm512_setzero_si512();
  for (int64_t g = 0; g < groups; ++g, x += 4 * kVnniRows) {
    const __m512i b0 = _mm512_loadu_si512(w0 + g * kGroupBytes);
    const __m512i b1 = P == 2 ? _mm512_loadu_si512(w1 + g * kGroupBytes) : b0;
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) {
      const __m512i u0 = _mm512_and_si512(_mm512_srli_epi16(b0, 2 * t), mask);
      const __m512i u1 = _mm512_and_si512(_mm512_srli_epi16(b1, 2 * t), mask);
#pragma GCC unroll 12
      for (int i = 0; i < R; ++i) {
        const __m512i xb = _mm512_set1_epi32(x[t * kVnniRows + i]);
        acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], u0, xb);
        if (P == 2) acc[i][P - 1] = _mm512_dpbusd_epi32(acc[i][P - 1], u1, xb);
      }
    }
  }
}

template <int R, int P, class Store>
void vnni_tile_store(const uint8_t* packed, int64_t groups, int64_t p, const int32_t* x, int64_t row0, int64_t m,
                     int64_t n, const int32_t* xsum, const Store& store) {
  __m512i acc[R][P];
  const uint8_t* w0 = packed + p * groups * kGroupBytes;
  vnni_tile<R, P>(w0, w0 + groups * kGroupBytes, x, groups, acc);
  alignas(64) int32_t raw[kPanel];
  const int64_t rows = std::min<int64_t>(R, m - row0);
  for (int64_t i = 0; i < rows; ++i)
    for (int j = 0; j < P; ++j) {
      _mm512_store_si512(raw, acc[i][j]);
      store(row0 + i, (p + j) * kPanel, std::min(kPanel, n - (p + j) * kPanel), raw, xsum[row0 + i]);
    }
}

template <int R, class Store>
void vnni_tile_panels(const uint8_t* packed, int64_t groups, int64_t p, int64_t count, const int32_t* x, int64_t row0,
                      int64_t m, int64_t n, const int32_t* xsum, const Store& store) {
  if (count == 2) return vnni_tile_store<R, 2>(packed, groups, p, x, row0, m, n, xsum, store);
  vnni_tile_store<R, 1>(packed, groups, p, x, row0, m, n, xsum, store);
}

// A tile of `rows` (<= kVnniRows) real rows: the register tile no taller than needed (decoding one
// token runs R = 1).
template <class Store>
void vnni_run(int64_t rows, const uint8_t* packed, int64_t groups, int64_t p, int64_t count, const int32_t* x,
              int64_t row0, int64_t m, int64_t n, const int32_t* xsum, const Store& store) {
  switch (rows) {
    case 1: return vnni_tile_panels<1>(packed, groups, p, count, x, row0, m, n, xsum, store);
    case 2: return vnni_tile_panels<2>(packed, groups, p, count, x, row0, m, n, xsum, store);
    case 3: return vnni_tile_panels<3>(packed, groups, p, count, x, row0, m, n, xsum, store);
    case 4: return vnni_tile_panels<4>(packed, groups, p, count, x, row0, m, n, xsum, store);
    case 5:
    case 6: return vnni_tile_panels<6>(packed, groups, p, count, x, row0, m, n, xsum, store);
    default: return vnni_tile_panels<kVnniRows>(packed, groups, p, count, x, row0, m, n, xsum, store);
  }
}

template <class Store>
void gemm_vnni(const int8_t* xq, int64_t m, int64_t k, const uint8_t* packed, int64_t n, const Store& store) {
  if (m == 0 || n == 0) return;
  const int64_t groups = ceil_div(k, kGroup), steps = 4 * groups, panels = ceil_div(n, kPanel);
  const int64_t tiles = ceil_div(m, kVnniRows);
  AlignedBuffer<int32_t> x(tiles * steps * kVnniRows);
  std::vector<int32_t> xsum(static_cast<size_t>(m));
  pack_activation_tiles(xq, m, k, steps, x.data, xsum.data());

  // Row blocks of at most kVnniBlockTiles tiles, as equal as whole tiles allow, and (with several)
  // a multiple of the thread count, so that each thread's contiguous share of the units (blocks
  // are the outer index) holds the same number of rows.
  const int64_t threads = max_threads(), pairs = ceil_div(panels, 2);
  int64_t blocks = ceil_div(tiles, kVnniBlockTiles);
  if (blocks > 1) blocks = std::min(tiles, ceil_div(blocks, threads) * threads);
  // Chunks small enough that every thread gets several units, at most kVnniChunkPairs pairs.
  const int64_t chunk = std::clamp<int64_t>(blocks * pairs / (4 * threads), 1, kVnniChunkPairs);
  const int64_t chunks = ceil_div(pairs, chunk);
  const int64_t unit_macs = std::min(m, ceil_div(tiles, blocks) * kVnniRows) * chunk * 2 * kPanel * std::max<int64_t>(k, 1);
  parallel_for(blocks * chunks, unit_macs / 64, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t block = u / chunks, c = u % chunks;
      const int64_t t0 = block * tiles / blocks, t1 = (block + 1) * tiles / blocks;
      const int64_t p_end = std::min(panels, (c + 1) * chunk * 2);
      for (int64_t p = c * chunk * 2; p < p_end; p += 2) {
        const int64_t count = std::min<int64_t>(2, panels - p);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t row0 = t * kVnniRows;
          vnni_run(std::min(kVnniRows, m - row0), packed, groups, p, count, x.data + t * steps * kVnniRows, row0, m, n,
                   xsum.data(), store);
        }
      }
    }
  });
}

#define BITK_GEMM_DRIVER gemm_vnni
#else
#define BITK_GEMM_DRIVER gemm
#endif  // BITK_GEMM_VNNI512

}  // namespace

int64_t ternary_gemm_packed_size(int64_t n, int64_t k) {
  check_sizes("ternary_gemm_packed_size", 0, n, k);
  return ceil_div(n, kPanel) * ceil_div(k, kGroup) * kGroupBytes;
}

void ternary_gemm_pack(const int8_t* codes, int64_t n, int64_t k, uint8_t* packed) {
  check_sizes("ternary_gemm_pack", 0, n, k);
  pack_panels(codes, n, k, packed);
}

void ternary_gemm_pack_transposed(const int8_t* codes, int64_t n, int64_t k, uint8_t* packed) {
  // codes^T [k, n]: its panel p is columns 16 p .. of codes, its group g rows 16 g .. of codes. Row
  // i of a group puts c = code + 1 of 16 adjacent columns into the 16 words (one per panel row)
  // at bits 8 (i % 4) + 2 (i / 4): 16 bytes widened to 16 words in registers where the build has
  // AVX2 / AVX-512, a plain loop else and at the last panel.
  check_sizes("ternary_gemm_pack_transposed", 0, k, n);
  const int64_t panels = ceil_div(k, kPanel), groups = ceil_div(n, kGroup);
  parallel_for(panels, kPanel * std::max<int64_t>(n, 1), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c0 = p * kPanel, width = std::min(kPanel, k - c0);
      for (int64_t g = 0; g < groups; ++g) {
        uint8_t* dst = packed + (p * groups + g) * kGroupBytes;
        const int64_t rows = std::min(kGroup, n - g * kGroup);
#if defined(BITK_GEMM_AVX2)
        if (width == kPanel) {  // 16 (AVX-512: one register) or 2 x 8 words, built in registers
          const __m128i one = _mm_set1_epi8(1), three = _mm_set1_epi8(3);
#if defined(BITK_GEMM_VNNI512)
          __m512i words = _mm512_setzero_si512();
          for (int64_t i = 0; i < rows; ++i) {
            const __m128i c = _mm_and_si128(
                _mm_add_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + (g * kGroup + i) * k + c0)), one),
                three);
            const __m128i shift = _mm_cvtsi32_si128(int(8 * (i % 4) + 2 * (i / 4)));
            words = _mm512_or_si512(words, _mm512_sll_epi32(_mm512_cvtepu8_epi32(c), shift));
          }
          _mm512_storeu_si512(dst, words);
#else
          __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
          for (int64_t i = 0; i < rows; ++i) {
            const __m128i c = _mm_and_si128(
                _mm_add_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + (g * kGroup + i) * k + c0)), one),
                three);
            const __m128i shift = _mm_cvtsi32_si128(int(8 * (i % 4) + 2 * (i / 4)));
            lo = _mm256_or_si256(lo, _mm256_sll_epi32(_mm256_cvtepu8_epi32(c), shift));
            hi = _mm256_or_si256(hi, _mm256_sll_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(c, 8)), shift));
          }
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), lo);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 32), hi);
#endif
          continue;
        }
#endif
        uint32_t words[kPanel] = {};
        for (int64_t i = 0; i < rows; ++i) {
          const int8_t* src = codes + (g * kGroup + i) * k + c0;
          const int shift = int(8 * (i % 4) + 2 * (i / 4));
          for (int64_t r = 0; r < width; ++r) words[r] |= (uint32_t(uint8_t(src[r] + 1)) & 3u) << shift;
        }
        std::memcpy(dst, words, sizeof words);
      }
    }
  });
}

void ternary_gemm_rows(const int8_t* xq, const float* factor, int64_t m, int64_t k, const uint8_t* packed, int64_t n,
                       float* y) {
  check_sizes("ternary_gemm_rows", m, n, k);
  BITK_GEMM_DRIVER(xq, m, k, packed, n, FloatStore{factor, 1.0f, false, y, n});
}

void ternary_gemm(const int8_t* xq, const float* s, int64_t m, int64_t k, const uint8_t* packed, int64_t n,
                  float gamma, float* y) {
  check_sizes("ternary_gemm", m, n, k);
  std::vector<float> factor(m);
  for (int64_t i = 0; i < m; ++i) factor[i] = gamma / s[i];
  BITK_GEMM_DRIVER(xq, m, k, packed, n, FloatStore{factor.data(), 1.0f, false, y, n});
}

void ternary_gemm_divide(const int8_t* xq, const float* s, int64_t m, int64_t k, const uint8_t* packed, int64_t n,
                         float scale, float* y) {
  check_sizes("ternary_gemm_divide", m, n, k);
  BITK_GEMM_DRIVER(xq, m, k, packed, n, FloatStore{s, scale, true, y, n});
}

void ternary_gemm_int32(const int8_t* xq, int64_t m, int64_t k, const uint8_t* packed, int64_t n, int32_t* acc) {
  check_sizes("ternary_gemm_int32", m, n, k);
  BITK_GEMM_DRIVER(xq, m, k, packed, n, Int32Store{acc, n});
}

void ternary_scale(const int8_t* codes, int64_t count, float gamma, float* out) {
  // Each product code * gamma is exact (code in {-1, 0, 1}): any order, any vector width, same bits.
  parallel_for(count, 5, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = static_cast<float>(codes[i]) * gamma;
  });
}

}  // namespace BITK_ISA
}  // namespace bitk
