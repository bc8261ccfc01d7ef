// Skinny fp32 GEMM for decode batches on the CPU: out[M, N] = x[M, K] @ w[N, K]^T, small M.
//
// Why: a decode step multiplies a handful of token rows by every weight matrix, so its cost
// is reading the weights from DRAM once. The BLAS torch ships streams them at well under the
// machine's read bandwidth for M = 1..16 (and M = 4 is slower than M = 1 there), which makes
// small-batch decode on a CPU twice as slow as it needs to be
// (benchmarks/skinny_gemm.py measures both side by side).
//
// How: threads split the N output columns (weight rows) into contiguous ranges. A tile of
// 4 weight rows (4 x K floats, a few KB: stays in L1) is multiplied by the x rows 4 at a time
// with 16 vector accumulators, so each weight byte comes from DRAM exactly once and the FMA
// units, not the loads, bound the inner loop. Sums are fp32, like the BLAS path.

#include <torch/extension.h>

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

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

#if defined(NEO_GEMM_AVX512)
using Vec = __m512;
constexpr int kLanes = 16;
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(Vec v) { return _mm512_reduce_add_ps(v); }
#elif defined(NEO_GEMM_AVX2)
using Vec = __m256;
constexpr int kLanes = 8;
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(Vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// out[m, n0 + r] for m < MT, r < RT: dot products of x rows with weight rows.
template <int MT, int RT>
inline void tile(const float* x, int64_t x_stride, const float* w, int64_t k_dim, float* out,
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
      for (int r = 0; r < RT; ++r) sums[m][r] += x[m * x_stride + k] * w[r * k_dim + k];
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < RT; ++r) out[m * out_stride + r] = sums[m][r];
}

template <int RT>
void row_tile(const float* x, int64_t m_dim, int64_t k_dim, const float* w, float* out,
              int64_t n_dim) {
  int64_t m = 0;
  for (; m + kMTile <= m_dim; m += kMTile)
    tile<kMTile, RT>(x + m * k_dim, k_dim, w, k_dim, out + m * n_dim, n_dim);
  switch (m_dim - m) {
    case 3: tile<3, RT>(x + m * k_dim, k_dim, w, k_dim, out + m * n_dim, n_dim); break;
    case 2: tile<2, RT>(x + m * k_dim, k_dim, w, k_dim, out + m * n_dim, n_dim); break;
    case 1: tile<1, RT>(x + m * k_dim, k_dim, w, k_dim, out + m * n_dim, n_dim); break;
    default: break;
  }
}

}  // namespace

// x: [M, K] fp32 contiguous; weight: [N, K] fp32 contiguous; out: [M, N] fp32 contiguous.
void skinny_linear(const at::Tensor& x, const at::Tensor& weight, at::Tensor& out,
                   int64_t num_threads) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && out.dim() == 2, "2-D tensors expected");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat &&
                  out.scalar_type() == at::kFloat,
              "skinny_linear computes in fp32");
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous() && out.is_contiguous(),
              "contiguous tensors expected");
  const int64_t m_dim = x.size(0), k_dim = x.size(1), n_dim = weight.size(0);
  TORCH_CHECK(weight.size(1) == k_dim, "x and weight disagree on K");
  TORCH_CHECK(out.size(0) == m_dim && out.size(1) == n_dim, "out has the wrong shape");
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t tiles = n_dim / kRowTile;

#pragma omp parallel for schedule(static) num_threads(std::max<int64_t>(1, num_threads))
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t n = t * kRowTile;
    row_tile<kRowTile>(xp, m_dim, k_dim, wp + n * k_dim, op + n, n_dim);
  }
  for (int64_t n = tiles * kRowTile; n < n_dim; ++n)  // leftover weight rows
    row_tile<1>(xp, m_dim, k_dim, wp + n * k_dim, op + n, n_dim);
}
