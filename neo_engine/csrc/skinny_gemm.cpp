// Skinny GEMM for decode batches on the CPU: out[M, N] = x[M, K] @ w[N, K]^T, small M,
// in fp32 (x, w, out fp32) or bf16 (x, w, out bf16; sums in fp32).
//
// Why: a decode step multiplies a handful of token rows by every weight matrix, so its cost
// is reading the weights from DRAM once. The BLAS torch ships streams fp32 weights at well
// under the machine's read bandwidth for M = 1..16, and its bf16 path at M = 1 reads weights
// at a fraction of its fp32 speed, which makes small-batch decode on a CPU several times
// slower than it needs to be (benchmarks/skinny_gemm.py measures them side by side).
//
// How: threads split the N output columns (weight rows) into contiguous ranges. A tile of
// 4 weight rows (a few KB: stays in L1) is multiplied by the x rows 4 at a time with 16 vector
// accumulators, so each weight byte comes from DRAM exactly once and the arithmetic units,
// not the loads, bound the inner loop. Three inner loops, chosen at compile time:
// - fp32: FMAs (AVX-512 or AVX2);
// - bf16 on a CPU with AVX512-BF16: native bf16 dot products (vdpbf16ps: 32 bf16 products
//   summed into 16 fp32 lanes per instruction), x and w read as stored; with few x rows one
//   weight row at a time (a sequential stream), else in the 4-row tiles;
// - bf16 elsewhere (the portable path): x converted to fp32 once per call, each weight
//   vector widened to fp32 (a 16-bit shift: exact) and FMA'd.
// Sums are fp32 in every path; a bf16 output is rounded to nearest even, as torch rounds.

#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "avx512_math.h"  // NEO_NATIVE_BF16, neo::load_bf16x16

#if defined(__AVX512F__)
#include <immintrin.h>
#define NEO_GEMM_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define NEO_GEMM_AVX2 1
#endif

namespace {

constexpr int kRowTile = 4;  // weight rows per tile
constexpr int kMTile = 4;    // x rows per pass over a tile

using bf16 = at::BFloat16;

inline float widen(float v) { return v; }
inline float widen(bf16 v) { return static_cast<float>(v); }
inline void store(float* o, float v) { *o = v; }
inline void store(bf16* o, float v) { *o = bf16(v); }  // round to nearest even

#if defined(NEO_GEMM_AVX512)
using Vec = __m512;
constexpr int kLanes = 16;
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline Vec vload(const bf16* p) { return neo::load_bf16x16(p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(Vec v) { return _mm512_reduce_add_ps(v); }
#elif defined(NEO_GEMM_AVX2)
using Vec = __m256;
constexpr int kLanes = 8;
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline Vec vload(const bf16* p) {
  __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(Vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// out[m, r] for m < MT, r < RT: dot products of fp32 x rows with weight rows of type W.
template <int MT, int RT, typename W, typename O>
inline void tile(const float* x, int64_t x_stride, const W* w, int64_t k_dim, O* out,
                 int64_t out_stride) {
  int64_t k = 0;
#if defined(NEO_GEMM_AVX512) || defined(NEO_GEMM_AVX2)
  Vec acc[MT][RT];
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < RT; ++r) acc[m][r] = vzero();
  for (; k + kLanes <= k_dim; k += kLanes) {
    Vec wv[RT];
    for (int r = 0; r < RT; ++r) wv[r] = vload(w + r * k_dim + k);
    for (int m = 0; m < MT; ++m) {
      Vec xv = vload(x + m * x_stride + k);
      for (int r = 0; r < RT; ++r) acc[m][r] = vfma(xv, wv[r], acc[m][r]);
    }
  }
  float sums[MT][RT];
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < RT; ++r) sums[m][r] = vsum(acc[m][r]);
#else
  float sums[MT][RT] = {};
#endif
  for (; k < k_dim; ++k)
    for (int m = 0; m < MT; ++m)
      for (int r = 0; r < RT; ++r) sums[m][r] += x[m * x_stride + k] * widen(w[r * k_dim + k]);
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < RT; ++r) store(out + m * out_stride + r, sums[m][r]);
}

// Calls visit(std::integral_constant<int, MT>{}, m) for the x rows from m on: kMTile rows at a
// time, then the 1-3 left over, so each tile is compiled for its row count.
template <typename Visit>
inline void over_x_rows(int64_t m_dim, Visit visit) {
  int64_t m = 0;
  for (; m + kMTile <= m_dim; m += kMTile) visit(std::integral_constant<int, kMTile>{}, m);
  switch (m_dim - m) {
    case 3: visit(std::integral_constant<int, 3>{}, m); break;
    case 2: visit(std::integral_constant<int, 2>{}, m); break;
    case 1: visit(std::integral_constant<int, 1>{}, m); break;
    default: break;
  }
}

template <int RT, typename W, typename O>
void row_tile(const float* x, int64_t m_dim, int64_t k_dim, const W* w, O* out,
              int64_t n_dim) {
  over_x_rows(m_dim, [&](auto mt, int64_t m) {
    tile<decltype(mt)::value, RT>(x + m * k_dim, k_dim, w, k_dim, out + m * n_dim, n_dim);
  });
}

#if defined(NEO_NATIVE_BF16)
// The native path: bf16 x rows and weight rows, 32 products per vdpbf16ps. The K tail is
// read with a zeroing mask (zeros add nothing), so no scalar loop is needed.
inline __m512bh bf16_load(const bf16* p) { return (__m512bh)_mm512_loadu_si512(p); }
inline __m512bh bf16_load(const bf16* p, __mmask32 mask) {
  return (__m512bh)_mm512_maskz_loadu_epi16(mask, p);
}

template <int MT, int RT, typename Load>
inline void dot_step(__m512 (&acc)[MT][RT], const bf16* x, int64_t x_stride, const bf16* w,
                     int64_t k_dim, Load load) {
  __m512bh wv[RT];
  for (int r = 0; r < RT; ++r) wv[r] = load(w + r * k_dim);
  for (int m = 0; m < MT; ++m) {
    const __m512bh xv = load(x + m * x_stride);
    for (int r = 0; r < RT; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv[r]);
  }
}

template <int MT, int RT>
inline void tile_native(const bf16* x, int64_t x_stride, const bf16* w, int64_t k_dim,
                        bf16* out, int64_t out_stride) {
  __m512 acc[MT][RT];
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < RT; ++r) acc[m][r] = _mm512_setzero_ps();
  int64_t k = 0;
  // Full vectors in the loop, the masked tail after it: a mask inside the loop makes GCC
  // write every accumulator to the stack on every step (3x slower here).
  for (; k + 32 <= k_dim; k += 32)
    dot_step(acc, x + k, x_stride, w + k, k_dim, [](const bf16* p) { return bf16_load(p); });
  if (k < k_dim) {
    const __mmask32 mask = (__mmask32(1) << (k_dim - k)) - 1;
    dot_step(acc, x + k, x_stride, w + k, k_dim,
             [mask](const bf16* p) { return bf16_load(p, mask); });
  }
  float sums[MT][RT];
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < RT; ++r) sums[m][r] = _mm512_reduce_add_ps(acc[m][r]);
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < RT; ++r) store(out + m * out_stride + r, sums[m][r]);
}

// Few x rows (all of x within half of L1): one weight row at a time instead of 4-row tiles,
// its K split over 4 accumulators per x row. Each thread then reads its weight rows as one
// sequential stream, which the hardware prefetchers follow; 4 interleaved short streams per
// tile (a 768-wide bf16 row is 24 cache lines) they barely ramp up on. Measured here at M = 1:
// 19-31 GB/s against the tiles' 13-25 (SmolLM2 and `small` shapes, K = 768..2048). With more
// x rows than L1 holds, the tiles win: they read each x vector once per 4 weight rows.
constexpr int64_t kRowStreamMaxXBytes = 16 * 1024;

template <int MT>
inline void row_stream_native(const bf16* x, int64_t x_stride, const bf16* w, int64_t k_dim,
                              bf16* out, int64_t out_stride) {
  __m512 acc[MT][4];
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 128 <= k_dim; k += 128) {
    __m512bh wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = bf16_load(w + k + 32 * j);
    for (int m = 0; m < MT; ++m)
      for (int j = 0; j < 4; ++j)
        acc[m][j] = _mm512_dpbf16_ps(acc[m][j], bf16_load(x + m * x_stride + k + 32 * j), wv[j]);
  }
  for (; k < k_dim; k += 32) {  // the last < 128 columns, the final partial vector masked
    const int64_t left = k_dim - k;
    const __mmask32 mask = left >= 32 ? ~__mmask32(0) : (__mmask32(1) << left) - 1;
    const __m512bh wv = bf16_load(w + k, mask);
    for (int m = 0; m < MT; ++m)
      acc[m][0] = _mm512_dpbf16_ps(acc[m][0], bf16_load(x + m * x_stride + k, mask), wv);
  }
  for (int m = 0; m < MT; ++m) {
    const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]),
                                     _mm512_add_ps(acc[m][2], acc[m][3]));
    store(out + m * out_stride, _mm512_reduce_add_ps(sum));
  }
}

void row_stream_all(const bf16* x, int64_t m_dim, int64_t k_dim, const bf16* w, bf16* out,
                    int64_t n_dim) {
  over_x_rows(m_dim, [&](auto mt, int64_t m) {
    row_stream_native<decltype(mt)::value>(x + m * k_dim, k_dim, w, k_dim, out + m * n_dim,
                                           n_dim);
  });
}

template <int RT>
void row_tile_native(const bf16* x, int64_t m_dim, int64_t k_dim, const bf16* w, bf16* out,
                     int64_t n_dim) {
  over_x_rows(m_dim, [&](auto mt, int64_t m) {
    tile_native<decltype(mt)::value, RT>(x + m * k_dim, k_dim, w, k_dim, out + m * n_dim,
                                         n_dim);
  });
}
#endif

// Every weight row of [N, K], 4-row tiles split over the threads, leftovers one by one.
template <typename Tile4, typename Tile1>
void over_weight_rows(int64_t n_dim, int64_t num_threads, Tile4 tile4, Tile1 tile1) {
  const int64_t tiles = n_dim / kRowTile;
#pragma omp parallel for schedule(static) num_threads(std::max<int64_t>(1, num_threads))
  for (int64_t t = 0; t < tiles; ++t) tile4(t * kRowTile);
  for (int64_t n = tiles * kRowTile; n < n_dim; ++n) tile1(n);
}

}  // namespace

// x: [M, K]; weight: [N, K]; out: [M, N]; all contiguous, all fp32 or all bf16. `native`:
// bf16 through vdpbf16ps where this build has it (false: the portable path, for its tests).
void skinny_linear(const at::Tensor& x, const at::Tensor& weight, at::Tensor& out,
                   int64_t num_threads, bool native) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && out.dim() == 2, "2-D tensors expected");
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16,
              "skinny_linear computes in fp32 or bf16");
  TORCH_CHECK(weight.scalar_type() == dtype && out.scalar_type() == dtype,
              "x, weight and out must share one dtype");
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous() && out.is_contiguous(),
              "contiguous tensors expected");
  const int64_t m_dim = x.size(0), k_dim = x.size(1), n_dim = weight.size(0);
  TORCH_CHECK(weight.size(1) == k_dim, "x and weight disagree on K");
  TORCH_CHECK(out.size(0) == m_dim && out.size(1) == n_dim, "out has the wrong shape");

  if (dtype == at::kFloat) {
    const float* xp = x.data_ptr<float>();
    const float* wp = weight.data_ptr<float>();
    float* op = out.data_ptr<float>();
    over_weight_rows(
        n_dim, num_threads,
        [&](int64_t n) { row_tile<kRowTile>(xp, m_dim, k_dim, wp + n * k_dim, op + n, n_dim); },
        [&](int64_t n) { row_tile<1>(xp, m_dim, k_dim, wp + n * k_dim, op + n, n_dim); });
    return;
  }
  const bf16* xb = reinterpret_cast<const bf16*>(x.data_ptr());
  const bf16* wb = reinterpret_cast<const bf16*>(weight.data_ptr());
  bf16* ob = reinterpret_cast<bf16*>(out.data_ptr());
#if defined(NEO_NATIVE_BF16)
  if (native && m_dim * k_dim * static_cast<int64_t>(sizeof(bf16)) <= kRowStreamMaxXBytes) {
#pragma omp parallel for schedule(static) num_threads(std::max<int64_t>(1, num_threads))
    for (int64_t n = 0; n < n_dim; ++n)
      row_stream_all(xb, m_dim, k_dim, wb + n * k_dim, ob + n, n_dim);
    return;
  }
  if (native) {
    over_weight_rows(
        n_dim, num_threads,
        [&](int64_t n) {
          row_tile_native<kRowTile>(xb, m_dim, k_dim, wb + n * k_dim, ob + n, n_dim);
        },
        [&](int64_t n) {
          row_tile_native<1>(xb, m_dim, k_dim, wb + n * k_dim, ob + n, n_dim);
        });
    return;
  }
#else
  (void)native;
#endif
  std::vector<float> xf(static_cast<size_t>(m_dim * k_dim));  // x in fp32, once per call
  for (int64_t i = 0; i < m_dim * k_dim; ++i) xf[i] = static_cast<float>(xb[i]);
  const float* xp = xf.data();
  over_weight_rows(
      n_dim, num_threads,
      [&](int64_t n) { row_tile<kRowTile>(xp, m_dim, k_dim, wb + n * k_dim, ob + n, n_dim); },
      [&](int64_t n) { row_tile<1>(xp, m_dim, k_dim, wb + n * k_dim, ob + n, n_dim); });
}
