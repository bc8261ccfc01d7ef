// Decode attention on the host CPU over a paged KV cache: NEO's hot spot.
//
// One task per (request, KV head), spread over all cores with OpenMP. A task streams the
// request's blocks once: for each block it computes the scores of every query head of the
// group (GQA) against the block's keys, folds them into a running max and sum (flash-decoding
// style), and accumulates the block's values. Every cached K and V byte is read exactly once,
// in place (no gather into a contiguous buffer), and all math is fp32 whatever the KV dtype
// (fp32, fp16 via F16C, bf16 via a shift).
//
// Cache layout: [num_blocks, num_kv_heads, block_size, head_dim], so one (block, head) is a
// contiguous block_size x head_dim tile.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#define NEO_AVX2 1
#endif

namespace {

// ---- element loads -----------------------------------------------------------------------
inline float to_float(float x) { return x; }
inline float to_float(at::Half x) { return static_cast<float>(x); }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }

#ifdef NEO_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 load8(const at::BFloat16* p) {
  __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}
#endif

template <typename T>
inline float dot(const float* q, const T* k, int d) {
  int i = 0;
  float sum = 0.f;
#ifdef NEO_AVX2
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; i + 16 <= d; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), load8(k + i + 8), acc1);
  }
  for (; i + 8 <= d; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k + i), acc0);
  sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
  for (; i < d; ++i) sum += q[i] * to_float(k[i]);
  return sum;
}

// acc[0:d] = acc * scale + w * v
template <typename T>
inline void axpy(float* acc, float w, const T* v, int d) {
  int i = 0;
#ifdef NEO_AVX2
  __m256 wv = _mm256_set1_ps(w);
  for (; i + 8 <= d; i += 8)
    _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(wv, load8(v + i), _mm256_loadu_ps(acc + i)));
#endif
  for (; i < d; ++i) acc[i] += w * to_float(v[i]);
}

inline void scale_inplace(float* acc, float s, int d) {
  for (int i = 0; i < d; ++i) acc[i] *= s;
}

template <typename T>
void attend(const float* q, const T* k_cache, const T* v_cache, const int32_t* tables,
            const int32_t* lens, float* out, int64_t batch, int64_t q_heads, int64_t kv_heads,
            int64_t block_size, int64_t head_dim, int64_t max_blocks, float scale,
            int num_threads) {
  const int64_t group = q_heads / kv_heads;
  const int64_t tile = block_size * head_dim;  // one (block, head) tile
  const int64_t block_stride = kv_heads * tile;
  const int d = static_cast<int>(head_dim);
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
  for (int64_t task = 0; task < batch * kv_heads; ++task) {
    const int64_t b = task / kv_heads, h = task % kv_heads;
    const int64_t len = lens[b];
    std::vector<float> qs(group * head_dim), acc(group * head_dim, 0.f);
    std::vector<float> m(group, -std::numeric_limits<float>::infinity()), l(group, 0.f);
    std::vector<float> s(group * block_size);
    for (int64_t g = 0; g < group; ++g)  // fold the softmax scale into q once
      for (int64_t i = 0; i < head_dim; ++i)
        qs[g * head_dim + i] = q[(b * q_heads + h * group + g) * head_dim + i] * scale;
    const int64_t nblocks = (len + block_size - 1) / block_size;
    for (int64_t j = 0; j < nblocks; ++j) {
      const int64_t block = tables[b * max_blocks + j];
      const int64_t ntok = std::min<int64_t>(block_size, len - j * block_size);
      const T* kt = k_cache + block * block_stride + h * tile;
      const T* vt = v_cache + block * block_stride + h * tile;
      for (int64_t g = 0; g < group; ++g) {
        float bmax = -std::numeric_limits<float>::infinity();
        for (int64_t t = 0; t < ntok; ++t) {
          float sc = dot(&qs[g * head_dim], kt + t * head_dim, d);
          s[g * block_size + t] = sc;
          bmax = std::max(bmax, sc);
        }
        const float new_m = std::max(m[g], bmax);
        const float correction = std::exp(m[g] - new_m);  // exp(-inf) = 0 on the first block
        l[g] *= correction;
        scale_inplace(&acc[g * head_dim], correction, d);
        m[g] = new_m;
        for (int64_t t = 0; t < ntok; ++t) {
          const float w = std::exp(s[g * block_size + t] - new_m);
          l[g] += w;
          axpy(&acc[g * head_dim], w, vt + t * head_dim, d);
        }
      }
    }
    for (int64_t g = 0; g < group; ++g) {
      float* o = out + (b * q_heads + h * group + g) * head_dim;
      const float inv = l[g] > 0.f ? 1.f / l[g] : 0.f;
      for (int64_t i = 0; i < head_dim; ++i) o[i] = acc[g * head_dim + i] * inv;
    }
  }
}

}  // namespace

// q: [B, Hq, D] fp32; caches: [N, Hkv, block_size, D]; block_tables: [B, max_blocks] int32;
// context_lens: [B] int32; out: [B, Hq, D] fp32 (written).
void decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                      torch::Tensor block_tables, torch::Tensor context_lens, torch::Tensor out,
                      double scale, int64_t num_threads) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && out.dtype() == torch::kFloat32, "q/out must be fp32");
  TORCH_CHECK(q.is_contiguous() && out.is_contiguous() && k_cache.is_contiguous() &&
                  v_cache.is_contiguous() && block_tables.is_contiguous() &&
                  context_lens.is_contiguous(),
              "all tensors must be contiguous");
  TORCH_CHECK(block_tables.dtype() == torch::kInt32 && context_lens.dtype() == torch::kInt32,
              "block tables and lengths must be int32");
  TORCH_CHECK(k_cache.dim() == 4 && q.dim() == 3, "bad ranks");
  const int64_t batch = q.size(0), q_heads = q.size(1), head_dim = q.size(2);
  const int64_t kv_heads = k_cache.size(1), block_size = k_cache.size(2);
  TORCH_CHECK(q_heads % kv_heads == 0 && k_cache.size(3) == head_dim, "shape mismatch");
  const int threads = num_threads > 0 ? static_cast<int>(num_threads) : 1;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    attend<T>(q.data_ptr<float>(), reinterpret_cast<const T*>(k_cache.data_ptr()),
              reinterpret_cast<const T*>(v_cache.data_ptr()), block_tables.data_ptr<int32_t>(),
              context_lens.data_ptr<int32_t>(), out.data_ptr<float>(), batch, q_heads, kv_heads,
              block_size, head_dim, block_tables.size(1), static_cast<float>(scale), threads);
  };
  switch (k_cache.scalar_type()) {
    case torch::kFloat32: run(float{}); break;
    case torch::kFloat16: run(at::Half{}); break;
    case torch::kBFloat16: run(at::BFloat16{}); break;
    default: TORCH_CHECK(false, "KV cache dtype must be float32, float16 or bfloat16");
  }
}

bool built_with_avx2() {
#ifdef NEO_AVX2
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "paged decode attention on the CPU",
        py::call_guard<py::gil_scoped_release>());
  m.def("built_with_avx2", &built_with_avx2);
}
