// Implementation of i2s_gemm.h. Every variant computes raw = sum_k c x exactly in integers, then
// acc = raw - sum_k x and the same float32 epilogue, so every build and thread count gives the
// same bits.
//
// Blocking: threads take (row block, weight chunk) units. Within a unit, each tile of kTileX
// activation rows (kTileX k bytes, in L1) meets every group of kTileW weight rows of the chunk in
// turn (the chunk's rows, kChunkRows k / 4 bytes, stay in L1/L2). The micro-kernel unpacks the
// group's 32-byte blocks in registers (c = (byte >> shift) & 3 gives 32 consecutive codes of one
// row per shift) and multiplies them by the tile's rows read in place, so no activation or weight
// is copied; each of its kTileX x kTileW accumulators holds one output's partial sums in int32
// lanes over all of k, added up once at the end.
#include "i2s_gemm.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "gemm_epilogue.h"
#include "parallel.h"

// Compiled once per instruction set (CMakeLists.txt); cpu_dispatch.cpp calls the build the CPU runs.
#if defined(__GNUC__) && defined(__x86_64__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>
#define BITK_I2S_VNNI512 1
#elif defined(__AVX2__) && defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define BITK_I2S_AVX2 1
#if defined(__AVXVNNI__)  // the avx_vnni build: vpdpbusd on ymm registers
#define BITK_I2S_VNNI256 1
#include "vnni256.h"
#endif
#endif

namespace bitk {
namespace BITK_ISA {
namespace {

constexpr int64_t kBlockBytes = kI2sBlock / 4;  // 32 bytes of 2-bit codes per block of 128 values
constexpr int64_t kMaxSize = int64_t(1) << 40;  // keeps every size product far from overflow
constexpr int64_t kRowBlock = 64;               // activation rows per unit at most
constexpr int64_t kChunkRows = 64;              // weight rows per unit at most

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_sizes(const char* what, int64_t m, int64_t n, int64_t k) {
  if (m < 0 || n < 0 || k < 0)
    throw std::invalid_argument(std::string(what) + ": negative size (m=" + std::to_string(m) +
                                ", n=" + std::to_string(n) + ", k=" + std::to_string(k) + ")");
  if (k % kI2sBlock != 0)
    throw std::invalid_argument(std::string(what) + ": k=" + std::to_string(k) + " is not a multiple of " +
                                std::to_string(kI2sBlock) + " (I2_S rows are whole blocks)");
  if (k > kI2sGemmMaxK)
    throw std::invalid_argument(std::string(what) + ": k=" + std::to_string(k) + " exceeds the supported " +
                                std::to_string(kI2sGemmMaxK) + " (int32 accumulators)");
  if (m > kMaxSize || n > kMaxSize) throw std::invalid_argument(std::string(what) + ": size too large");
}

// ---------------------------------------------------------------------------- micro-kernels
// tile<RX, RW>(x, k, w, ws, out, ostride): out[i * ostride + j] = sum_k c[j][k] x[i][k] for the RX
// activation rows at x (stride k) and the RW weight rows at w (stride ws = k / 4 bytes).

#if defined(BITK_I2S_VNNI512)

// GCC 12's AVX-512 headers pass an undefined register as the unused merge source of unpack and
// extract intrinsics, which -Wuninitialized reports falsely.
#pragma GCC diagnostic ignored "-Wuninitialized"

// vpdpbusd: unsigned bytes (the codes c) times signed bytes (the activations), four products per
// int32 lane, no saturation. A block's 32 bytes, broadcast to both halves of a zmm, shifted right
// (per qword) by 6 | 4 (low | high half) and masked to their low 2 bits hold c of the block's
// values 0..63 in order; by 2 | 0, values 64..127: each is one vpdpbusd against 64 activation
// bytes loaded as they lie. 4 x 4 outputs: 16 accumulators, 8 registers of unpacked weights, 2 of
// activations; the unpacking (a broadcast, two shifts and two masks per weight row and block)
// serves 4 activation rows.
constexpr int kTileX = 4;
constexpr int kTileW = 4;

// The lane sums of a, b, c, d (16 int32 lanes each) as one int32 x 4.
inline __m128i sum4(__m512i a, __m512i b, __m512i c, __m512i d) {
  const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
  const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
  // per 128-bit lane: the partial sums of a, b, c, d
  const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
  const __m256i v = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

// The loop in inline asm (GCC, given these accumulators as intrinsics, copies each one between
// registers twice per block). zmm0..15: the accumulator of activation row i and weight row j in
// zmm(4 i + j); zmm16..19 / zmm20..23: the codes of values 0..63 / 64..127 of weight row j's block;
// zmm24 a block's bytes; zmm25/26 the shifts, zmm27 the mask; zmm28/29 an activation row's 128
// bytes. Activation row i is read at x + i * k (s1 = k, s3 = 3 k), weight row j at w + j * ws
// (ws3 = 3 ws).
#define BITK_I2S_ZERO(a) "vpxord %%zmm" #a ", %%zmm" #a ", %%zmm" #a "\n\t"
#define BITK_I2S_SAVE(a) "vmovdqa64 %%zmm" #a ", " #a "*64(%[acc])\n\t"
#define BITK_I2S_ZERO_ROW(a0, a1, a2, a3) BITK_I2S_ZERO(a0) BITK_I2S_ZERO(a1) BITK_I2S_ZERO(a2) BITK_I2S_ZERO(a3)
#define BITK_I2S_SAVE_ROW(a0, a1, a2, a3) BITK_I2S_SAVE(a0) BITK_I2S_SAVE(a1) BITK_I2S_SAVE(a2) BITK_I2S_SAVE(a3)
#define BITK_I2S_ROWS_1(F) F##_ROW(0, 1, 2, 3)
#define BITK_I2S_ROWS_2(F) BITK_I2S_ROWS_1(F) F##_ROW(4, 5, 6, 7)
#define BITK_I2S_ROWS_3(F) BITK_I2S_ROWS_2(F) F##_ROW(8, 9, 10, 11)
#define BITK_I2S_ROWS_4(F) BITK_I2S_ROWS_3(F) F##_ROW(12, 13, 14, 15)
#define BITK_I2S_UNPACK(at, lo, hi)                      \
  "vbroadcasti64x4 " at ", %%zmm24\n\t"                  \
  "vpsrlvq %%zmm25, %%zmm24, %%zmm" #lo "\n\t"           \
  "vpsrlvq %%zmm26, %%zmm24, %%zmm" #hi "\n\t"           \
  "vpandq %%zmm27, %%zmm" #lo ", %%zmm" #lo "\n\t"       \
  "vpandq %%zmm27, %%zmm" #hi ", %%zmm" #hi "\n\t"
#define BITK_I2S_DOT(a, lo, hi)                          \
  "vpdpbusd %%zmm28, %%zmm" #lo ", %%zmm" #a "\n\t"      \
  "vpdpbusd %%zmm29, %%zmm" #hi ", %%zmm" #a "\n\t"
#define BITK_I2S_ROW(at, at64, a0, a1, a2, a3)                                                  \
  "vmovdqu64 " at ", %%zmm28\n\t"                                                               \
  "vmovdqu64 " at64 ", %%zmm29\n\t"                                                             \
  BITK_I2S_DOT(a0, 16, 20) BITK_I2S_DOT(a1, 17, 21) BITK_I2S_DOT(a2, 18, 22) BITK_I2S_DOT(a3, 19, 23)
#define BITK_I2S_DOT_1 BITK_I2S_ROW("(%[x])", "64(%[x])", 0, 1, 2, 3)
#define BITK_I2S_DOT_2 BITK_I2S_DOT_1 BITK_I2S_ROW("(%[x],%[s1],1)", "64(%[x],%[s1],1)", 4, 5, 6, 7)
#define BITK_I2S_DOT_3 BITK_I2S_DOT_2 BITK_I2S_ROW("(%[x],%[s1],2)", "64(%[x],%[s1],2)", 8, 9, 10, 11)
#define BITK_I2S_DOT_4 BITK_I2S_DOT_3 BITK_I2S_ROW("(%[x],%[s3],1)", "64(%[x],%[s3],1)", 12, 13, 14, 15)

// acc[4 i + j] = the lane sums of activation row i (< R) times weight row j (< 4) over `blocks`
// >= 1 blocks.
#define BITK_I2S_LOOP(R)                                                                           \
  template <>                                                                                      \
  void tile_sums<R>(const int8_t* x, int64_t k, const uint8_t* w, int64_t ws, int64_t blocks, __m512i* acc) { \
    const int64_t s1 = k, s3 = 3 * k, ws3 = 3 * ws;                                                \
    asm volatile("vmovdqu64 %[sh0], %%zmm25\n\t"                                                   \
                 "vmovdqu64 %[sh1], %%zmm26\n\t"                                                   \
                 "vmovdqu64 %[mask], %%zmm27\n\t"                                                  \
                 BITK_I2S_ROWS_##R(BITK_I2S_ZERO)                                                  \
                 "1:\n\t"                                                                          \
                 BITK_I2S_UNPACK("(%[w])", 16, 20)                                                 \
                 BITK_I2S_UNPACK("(%[w],%[ws],1)", 17, 21)                                         \
                 BITK_I2S_UNPACK("(%[w],%[ws],2)", 18, 22)                                         \
                 BITK_I2S_UNPACK("(%[w],%[ws3],1)", 19, 23)                                        \
                 BITK_I2S_DOT_##R                                                                  \
                 "add $32, %[w]\n\t"                                                               \
                 "sub $-128, %[x]\n\t"                                                             \
                 "dec %[blocks]\n\t"                                                               \
                 "jnz 1b\n\t"                                                                      \
                 BITK_I2S_ROWS_##R(BITK_I2S_SAVE)                                                  \
                 : [w] "+r"(w), [x] "+r"(x), [blocks] "+r"(blocks)                                 \
                 : [acc] "r"(acc), [ws] "r"(ws), [ws3] "r"(ws3), [s1] "r"(s1), [s3] "r"(s3),       \
                   [sh0] "m"(kFirstShift), [sh1] "m"(kSecondShift), [mask] "m"(kCodeMask)          \
                 : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",  \
                   "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16",   \
                   "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", \
                   "xmm26", "xmm27", "xmm28", "xmm29");                                            \
  }

// Shifts of the eight qwords: 6 | 4 (low | high 32 bytes) give c of a block's values j | j + 32
// in the low bits of each byte, 2 | 0 values j + 64 | j + 96; the mask keeps those 2 bits.
alignas(64) constexpr uint64_t kFirstShift[8] = {6, 6, 6, 6, 4, 4, 4, 4};
alignas(64) constexpr uint64_t kSecondShift[8] = {2, 2, 2, 2, 0, 0, 0, 0};
alignas(64) constexpr uint64_t kCodeMask[8] = {0x0303030303030303, 0x0303030303030303, 0x0303030303030303,
                                               0x0303030303030303, 0x0303030303030303, 0x0303030303030303,
                                               0x0303030303030303, 0x0303030303030303};

template <int R>
void tile_sums(const int8_t* x, int64_t k, const uint8_t* w, int64_t ws, int64_t blocks, __m512i* acc);
BITK_I2S_LOOP(1)
BITK_I2S_LOOP(2)
BITK_I2S_LOOP(3)
BITK_I2S_LOOP(4)

template <int RX, int RW>
void tile(const int8_t* x, int64_t k, const uint8_t* w, int64_t ws, int32_t* out, int64_t ostride) {
  const int64_t blocks = k / kI2sBlock;
  // Fewer than 4 weight rows (the last of a matrix whose n is no multiple of 4): one at a time,
  // as 4 copies of it (the rows past it may lie past the end of the weights).
  for (int j0 = 0; j0 < RW; j0 += RW == 4 ? 4 : 1) {
    __m512i acc[4 * RX];  // (the asm's stores are aligned: so is an array of __m512i)
    if (blocks == 0) {
      for (int e = 0; e < 4 * RX; ++e) acc[e] = _mm512_setzero_si512();
    } else {
      tile_sums<RX>(x, k, w + j0 * ws, RW == 4 ? ws : 0, blocks, acc);
    }
#pragma GCC unroll 4
    for (int i = 0; i < RX; ++i) {
      alignas(16) int32_t sums[4];
      _mm_store_si128(reinterpret_cast<__m128i*>(sums),
                      sum4(acc[4 * i], acc[4 * i + 1], acc[4 * i + 2], acc[4 * i + 3]));
      if (RW == 4)
        for (int j = 0; j < 4; ++j) out[i * ostride + j] = sums[j];
      else
        out[i * ostride + j0] = sums[0];
    }
  }
}

#elif defined(BITK_I2S_AVX2)

// vpmaddubsw: c (u8) times x (s8), adjacent pairs summed into int16; a pair lies in [-768, 762]
// even for the invalid c = 3, so it never saturates. Per block, shifting its 32 bytes right by 6,
// 4, 2, 0 and masking gives c of the block's values 32 t .. 32 t + 31 (t = 0..3), one ymm against
// 32 activation bytes. int16 partial sums gather up to kWidenBlocks blocks (4 products per lane
// each: at most 8 * 4 * 768 = 24576 in magnitude, inside int16), then widen into int32 with
// vpmaddwd. 4 x 2 outputs. The avx_vnni build multiplies with vpdpbusd instead, straight into
// int32 (VEX, or EVEX where the CPU has AVX-512 VNNI but no AVX-VNNI: vnni256.h).
constexpr int kTileX = 4;
constexpr int kTileW = 2;
constexpr int64_t kWidenBlocks = 8;
static_assert(kWidenBlocks * 4 * 768 <= 32767, "int16 partial sums could overflow");

// The loop in inline asm (GCC spills the partial sums when written with intrinsics). ymm0..7: the
// partial sums of activation row i and weight row j in ymm(2 i + j); ymm8/9 the two weight rows'
// block; ymm10/14 their codes at one shift; ymm11 32 activation bytes; ymm12 a product; ymm13 the
// mask. Activation row i is read at x + i * k (s1 = k, s3 = 3 k), weight row 1 at w + ws.
#define BITK_I2S2_ZERO(a) "vpxor %%xmm" #a ", %%xmm" #a ", %%xmm" #a "\n\t"
#define BITK_I2S2_SAVE(a) "vmovdqa %%ymm" #a ", " #a "*32(%[part])\n\t"
#define BITK_I2S2_ZERO_ROW(a0, a1) BITK_I2S2_ZERO(a0) BITK_I2S2_ZERO(a1)
#define BITK_I2S2_SAVE_ROW(a0, a1) BITK_I2S2_SAVE(a0) BITK_I2S2_SAVE(a1)
#define BITK_I2S2_EACH_1(F) F##_ROW(0, 1)
#define BITK_I2S2_EACH_2(F) BITK_I2S2_EACH_1(F) F##_ROW(2, 3)
#define BITK_I2S2_EACH_3(F) BITK_I2S2_EACH_2(F) F##_ROW(4, 5)
#define BITK_I2S2_EACH_4(F) BITK_I2S2_EACH_3(F) F##_ROW(6, 7)
#define BITK_I2S2_ROW_Madd(off, base, p0, p1)            \
  "vmovdqu " #off base ", %%ymm11\n\t"                   \
  "vpmaddubsw %%ymm11, %%ymm10, %%ymm12\n\t"             \
  "vpaddw %%ymm12, %%ymm" #p0 ", %%ymm" #p0 "\n\t"       \
  "vpmaddubsw %%ymm11, %%ymm14, %%ymm12\n\t"             \
  "vpaddw %%ymm12, %%ymm" #p1 ", %%ymm" #p1 "\n\t"
#define BITK_I2S2_ROW_Vex(off, base, p0, p1)             \
  "vmovdqu " #off base ", %%ymm11\n\t"                   \
  "%{vex%} vpdpbusd %%ymm11, %%ymm10, %%ymm" #p0 "\n\t"  \
  "%{vex%} vpdpbusd %%ymm11, %%ymm14, %%ymm" #p1 "\n\t"
#define BITK_I2S2_ROW_Evex(off, base, p0, p1)            \
  "vmovdqu " #off base ", %%ymm11\n\t"                   \
  "%{evex%} vpdpbusd %%ymm11, %%ymm10, %%ymm" #p0 "\n\t" \
  "%{evex%} vpdpbusd %%ymm11, %%ymm14, %%ymm" #p1 "\n\t"
#define BITK_I2S2_ROWS_1(K, o) BITK_I2S2_ROW_##K(o, "(%[x])", 0, 1)
#define BITK_I2S2_ROWS_2(K, o) BITK_I2S2_ROWS_1(K, o) BITK_I2S2_ROW_##K(o, "(%[x],%[s1],1)", 2, 3)
#define BITK_I2S2_ROWS_3(K, o) BITK_I2S2_ROWS_2(K, o) BITK_I2S2_ROW_##K(o, "(%[x],%[s1],2)", 4, 5)
#define BITK_I2S2_ROWS_4(K, o) BITK_I2S2_ROWS_3(K, o) BITK_I2S2_ROW_##K(o, "(%[x],%[s3],1)", 6, 7)
#define BITK_I2S2_STEP(R, K, shift, o)                   \
  "vpsrlw $" #shift ", %%ymm8, %%ymm10\n\t"              \
  "vpand %%ymm13, %%ymm10, %%ymm10\n\t"                  \
  "vpsrlw $" #shift ", %%ymm9, %%ymm14\n\t"              \
  "vpand %%ymm13, %%ymm14, %%ymm14\n\t"                  \
  BITK_I2S2_ROWS_##R(K, o)

enum StepKind { kMadd, kVex, kEvex };

// part[2 i + j] = the partial sums (int16 for kMadd, else int32) of activation row i (< R) and
// weight row j (< 2) over `blocks` (1 .. kWidenBlocks) blocks.
#define BITK_I2S2_LOOP(R, K)                                                                       \
  template <>                                                                                      \
  void tile_part<R, k##K>(const int8_t* x, int64_t k, const uint8_t* w, int64_t ws, int64_t blocks, \
                          __m256i* part) {                                                         \
    const int64_t s1 = k, s3 = 3 * k;                                                              \
    asm volatile("vmovdqu %[mask], %%ymm13\n\t"                                                    \
                 BITK_I2S2_EACH_##R(BITK_I2S2_ZERO)                                                \
                 "1:\n\t"                                                                          \
                 "vmovdqu (%[w]), %%ymm8\n\t"                                                      \
                 "vmovdqu (%[w],%[ws],1), %%ymm9\n\t"                                              \
                 BITK_I2S2_STEP(R, K, 6, 0) BITK_I2S2_STEP(R, K, 4, 32)                            \
                 BITK_I2S2_STEP(R, K, 2, 64) BITK_I2S2_STEP(R, K, 0, 96)                           \
                 "add $32, %[w]\n\t"                                                               \
                 "sub $-128, %[x]\n\t"                                                             \
                 "dec %[blocks]\n\t"                                                               \
                 "jnz 1b\n\t"                                                                      \
                 BITK_I2S2_EACH_##R(BITK_I2S2_SAVE)                                                \
                 : [w] "+r"(w), [x] "+r"(x), [blocks] "+r"(blocks)                                 \
                 : [part] "r"(part), [ws] "r"(ws), [s1] "r"(s1), [s3] "r"(s3), [mask] "m"(kCodeMask) \
                 : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",  \
                   "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14");                    \
  }

alignas(32) constexpr uint64_t kCodeMask[4] = {0x0303030303030303, 0x0303030303030303, 0x0303030303030303,
                                               0x0303030303030303};

// One activation row (decoding a token) with vpdpbusd: the block's 4 shifts go to 4 accumulator
// pairs (ymm0..7, part[0..7]), since a chain of dependent vpdpbusd on one pair would wait on
// their latency; tile_kind adds them up.
#define BITK_I2S2_STEP_ONE(K, shift, o, p0, p1)          \
  "vpsrlw $" #shift ", %%ymm8, %%ymm10\n\t"              \
  "vpand %%ymm13, %%ymm10, %%ymm10\n\t"                  \
  "vpsrlw $" #shift ", %%ymm9, %%ymm14\n\t"              \
  "vpand %%ymm13, %%ymm14, %%ymm14\n\t"                  \
  BITK_I2S2_ROW_##K(o, "(%[x])", p0, p1)
#define BITK_I2S2_LOOP_ONE(K)                                                                      \
  template <>                                                                                      \
  void tile_part<1, k##K>(const int8_t* x, int64_t, const uint8_t* w, int64_t ws, int64_t blocks,  \
                          __m256i* part) {                                                         \
    asm volatile("vmovdqu %[mask], %%ymm13\n\t"                                                    \
                 BITK_I2S2_EACH_4(BITK_I2S2_ZERO)                                                  \
                 "1:\n\t"                                                                          \
                 "vmovdqu (%[w]), %%ymm8\n\t"                                                      \
                 "vmovdqu (%[w],%[ws],1), %%ymm9\n\t"                                              \
                 BITK_I2S2_STEP_ONE(K, 6, 0, 0, 1) BITK_I2S2_STEP_ONE(K, 4, 32, 2, 3)              \
                 BITK_I2S2_STEP_ONE(K, 2, 64, 4, 5) BITK_I2S2_STEP_ONE(K, 0, 96, 6, 7)             \
                 "add $32, %[w]\n\t"                                                               \
                 "sub $-128, %[x]\n\t"                                                             \
                 "dec %[blocks]\n\t"                                                               \
                 "jnz 1b\n\t"                                                                      \
                 BITK_I2S2_EACH_4(BITK_I2S2_SAVE)                                                  \
                 : [w] "+r"(w), [x] "+r"(x), [blocks] "+r"(blocks)                                 \
                 : [part] "r"(part), [ws] "r"(ws), [mask] "m"(kCodeMask)                           \
                 : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",  \
                   "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14");                    \
  }

template <int R, int K>
void tile_part(const int8_t* x, int64_t k, const uint8_t* w, int64_t ws, int64_t blocks, __m256i* part);
#if defined(BITK_I2S_VNNI256)
BITK_I2S2_LOOP_ONE(Vex)
BITK_I2S2_LOOP_ONE(Evex)
BITK_I2S2_LOOP(2, Vex) BITK_I2S2_LOOP(3, Vex) BITK_I2S2_LOOP(4, Vex)
BITK_I2S2_LOOP(2, Evex) BITK_I2S2_LOOP(3, Evex) BITK_I2S2_LOOP(4, Evex)
#else
BITK_I2S2_LOOP(1, Madd) BITK_I2S2_LOOP(2, Madd) BITK_I2S2_LOOP(3, Madd) BITK_I2S2_LOOP(4, Madd)
#endif

template <int RX, int RW, int K>
void tile_kind(const int8_t* x, int64_t k, const uint8_t* w, int64_t ws, int32_t* out, int64_t ostride) {
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t blocks = k / kI2sBlock;
  // One weight row (the last of a matrix of odd n): read twice (the row past it may lie past the
  // end of the weights).
  constexpr bool spread = RX == 1 && K != kMadd;  // one row with vpdpbusd: 4 accumulator pairs
  __m256i acc[2 * RX], part[spread ? 8 : 2 * RX];
  for (int e = 0; e < 2 * RX; ++e) acc[e] = _mm256_setzero_si256();
  for (int64_t b = 0; b < blocks; b += kWidenBlocks) {
    tile_part<RX, K>(x + b * kI2sBlock, k, w + b * kBlockBytes, RW == 2 ? ws : 0,
                     std::min(kWidenBlocks, blocks - b), part);
    if constexpr (spread) {
      for (int j = 0; j < 2; ++j)
        acc[j] = _mm256_add_epi32(_mm256_add_epi32(acc[j], _mm256_add_epi32(part[j], part[j + 2])),
                                  _mm256_add_epi32(part[j + 4], part[j + 6]));
    } else {
      for (int e = 0; e < 2 * RX; ++e)
        acc[e] = _mm256_add_epi32(acc[e], K == kMadd ? _mm256_madd_epi16(part[e], ones) : part[e]);
    }
  }
  for (int i = 0; i < RX; ++i)
    for (int j = 0; j < RW; ++j) {
      const __m256i v = acc[2 * i + j];
      __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
      out[i * ostride + j] = _mm_cvtsi128_si32(s);
    }
}

template <int RX, int RW>
void tile(const int8_t* x, int64_t k, const uint8_t* w, int64_t ws, int32_t* out, int64_t ostride) {
#if defined(BITK_I2S_VNNI256)
  if (vnni256_evex()) return tile_kind<RX, RW, kEvex>(x, k, w, ws, out, ostride);
  tile_kind<RX, RW, kVex>(x, k, w, ws, out, ostride);
#else
  tile_kind<RX, RW, kMadd>(x, k, w, ws, out, ostride);
#endif
}

#else  // scalar

constexpr int kTileX = 1;
constexpr int kTileW = 1;

template <int RX, int RW>
void tile(const int8_t* x, int64_t k, const uint8_t* w, int64_t, int32_t* out, int64_t) {
  int32_t total = 0;
  for (int64_t b = 0; b < k / kI2sBlock; ++b) {
    const uint8_t* bytes = w + b * kBlockBytes;
    const int8_t* xb = x + b * kI2sBlock;
    for (int64_t j = 0; j < kBlockBytes; ++j) {
      const int32_t byte = bytes[j];
      total += (byte >> 6) * xb[j] + ((byte >> 4) & 3) * xb[j + 32] + ((byte >> 2) & 3) * xb[j + 64] +
               (byte & 3) * xb[j + 96];
    }
  }
  out[0] = total;
}

#endif

// The tile of rx <= kTileX rows by rw <= kTileW weight rows, the register tile no larger than needed.
template <int RX, int RW = kTileW>
void run_columns(int64_t rw, const int8_t* x, int64_t k, const uint8_t* w, int64_t ws, int32_t* out, int64_t ostride) {
  if constexpr (RW > 1) {
    if (rw < RW) return run_columns<RX, RW - 1>(rw, x, k, w, ws, out, ostride);
  }
  tile<RX, RW>(x, k, w, ws, out, ostride);
}

template <int RX = kTileX>
void run_tile(int64_t rx, int64_t rw, const int8_t* x, int64_t k, const uint8_t* w, int64_t ws, int32_t* out,
              int64_t ostride) {
  if constexpr (RX > 1) {
    if (rx < RX) return run_tile<RX - 1>(rx, rw, x, k, w, ws, out, ostride);
  }
  run_columns<RX>(rw, x, k, w, ws, out, ostride);
}

template <class Store>
void i2s_gemm(const int8_t* xq, int64_t m, int64_t k, const uint8_t* w, int64_t n, const Store& store) {
  if (m == 0 || n == 0) return;
  std::vector<int32_t> xsum(static_cast<size_t>(m));
  parallel_for(m, std::max<int64_t>(k, 1), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      int32_t total = 0;
      for (int64_t kk = 0; kk < k; ++kk) total += xq[row * k + kk];
      xsum[size_t(row)] = total;
    }
  });
  const int64_t ws = k / 4, blocks = ceil_div(m, kRowBlock), chunks = ceil_div(n, kChunkRows);
  const int64_t unit_macs = std::min(m, kRowBlock) * std::min(n, kChunkRows) * std::max<int64_t>(k, 1);
  // Units row-block major: a thread's consecutive units share their activations.
  parallel_for(blocks * chunks, unit_macs / 64, [&](int64_t begin, int64_t end) {
    int32_t raw[kTileX * kChunkRows];  // the raw sums of a tile's rows over the chunk
    for (int64_t u = begin; u < end; ++u) {
      const int64_t r0 = u / chunks * kRowBlock, r1 = std::min(m, r0 + kRowBlock);
      const int64_t n0 = u % chunks * kChunkRows, cols = std::min(n, n0 + kChunkRows) - n0;
      for (int64_t i0 = r0; i0 < r1; i0 += kTileX) {
        const int64_t rx = std::min<int64_t>(kTileX, r1 - i0);
        for (int64_t j = 0; j < cols; j += kTileW)
          run_tile(rx, std::min<int64_t>(kTileW, cols - j), xq + i0 * k, k, w + (n0 + j) * ws, ws, raw + j,
                   kChunkRows);
        for (int64_t i = 0; i < rx; ++i) store(i0 + i, n0, cols, raw + i * kChunkRows, xsum[size_t(i0 + i)]);
      }
    }
  });
}

}  // namespace

int64_t i2s_gemm_weight_bytes(int64_t n, int64_t k) {
  check_sizes("i2s_gemm_weight_bytes", 0, n, k);
  return n * (k / 4);
}

void i2s_gemm_divide(const int8_t* xq, const float* s, int64_t m, int64_t k, const uint8_t* w, int64_t n, float scale,
                     float* y) {
  check_sizes("i2s_gemm_divide", m, n, k);
  i2s_gemm(xq, m, k, w, n, FloatStore{s, scale, true, y, n});
}

void i2s_gemm_int32(const int8_t* xq, int64_t m, int64_t k, const uint8_t* w, int64_t n, int32_t* acc) {
  check_sizes("i2s_gemm_int32", m, n, k);
  i2s_gemm(xq, m, k, w, n, Int32Store{acc, n});
}

}  // namespace BITK_ISA
}  // namespace bitk
