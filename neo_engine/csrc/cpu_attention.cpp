// Decode attention on the host CPU over a paged KV cache: NEO's hot spot.
//
// One task per (request, KV head), spread over all cores with OpenMP. A task streams the
// request's blocks once: for each block it computes the scores of every query head of the
// group (GQA) against the block's keys, folds them into a running max and sum (flash-decoding
// style), and accumulates the block's values. Every cached K and V byte is read exactly once,
// in place (no gather into a contiguous buffer), and all math is fp32 whatever the KV dtype
// (fp32, fp16 via F16C, bf16 via a shift). With AVX-512, four scores share the shuffles of
// their horizontal sums and a 64-dim head accumulates V in four 16-lane registers (~10-17%
// faster at SmolLM2's decode shapes, bf16 KV, measured side by side with the version before).
// With AVX512-BF16, bf16 keys are scored against a query that is itself bf16 (a bf16 model's
// query, widened; checked per task) with vdpbf16ps: exact products, fp32 sums, no widening of
// K (another ~10-13% at 160-1,000-token contexts, medians of interleaved runs). There, with
// bf16 KV and a bf16 query, a request's KV head is attended in two passes (every score, one
// softmax over all of them, then the values; attend_bf16_two_pass): at 16-token blocks and
// 64-value heads the online softmax's chain of per-tile reductions, not the loads, bounded the
// kernel. SmolLM2's decode shape (32 requests x 160 tokens, 9 query heads over 3 KV heads,
// cache-resident): 1.7x the online path's speed; in the engine's bf16 decode steps at batch
// 32, where the KV comes from DRAM, its attention took 0.81x the time (ad hoc, side by side).
//
// Cache layout: [num_blocks, num_kv_heads, block_size, head_dim], so one (block, head) is a
// contiguous block_size x head_dim tile.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#define NEO_AVX2 1
#endif
#if defined(NEO_AVX2) && defined(__AVX512F__)
#define NEO_AVX512 1
#endif
#include "avx512_math.h"  // NEO_NATIVE_BF16, neo::load_bf16x16, neo::exp256

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
#ifdef NEO_AVX512
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load16(const at::BFloat16* p) { return neo::load_bf16x16(p); }
#endif
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}
#endif

// KV blocks requested ahead of the one being read, into L2 (prefetcht1). A request's blocks
// lie at scattered places in the pool, a tile (one block of one head) a few KiB, so the
// hardware prefetchers cannot run ahead from one block to the next, and a step's KV comes
// from DRAM (every layer's is read once per step, after the rest of the step evicted it).
// Asking for the whole tile of the next block only, into L1, left too few lines in flight:
// SmolLM2's decode shape (64 requests, 9 query over 3 KV heads, bf16, 30 layers' pools read
// one after the other) read at 12-15 GB/s of the 33 GB/s a sum reads; six blocks ahead into
// L2 at 20-21 GB/s (0.64-0.76x the time at 160 and 1,024 tokens; the general path, with an
// fp32 query, 0.84-0.93x); ten or sixteen ahead, or one stream running on from the keys into
// the values, no faster. Llama-2-7B's layer (32 heads of 128, fp16, 1,024 tokens): unchanged,
// 0.99x (medians of interleaved runs, ad hoc).
constexpr int64_t kPrefetchBlocks = 6;
// Of a block's run of adjacent heads, at most this much is requested ahead: a long run (32
// heads of 128 values: 128 KiB a block) is contiguous, which the hardware prefetchers follow
// once it is started, and six whole runs would overflow L2.
constexpr int64_t kPrefetchRunBytes = 8192;

inline void prefetch_l2(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 2);
}

// Request the tiles of blocks [from, to) of one head run (`bytes` from `head` in each block).
inline void prefetch_blocks(const void* head, const int32_t* table, int64_t from, int64_t to,
                            int64_t block_stride_bytes, int64_t bytes) {
  for (int64_t j = from; j < to; ++j)
    prefetch_l2(static_cast<const char*>(head) + table[j] * block_stride_bytes, bytes);
}

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

#ifdef NEO_AVX512
// [sum(a0), sum(a1), sum(a2), sum(a3)]: four horizontal sums sharing their shuffles (four
// separate reductions cost ~2.5x the instructions).
inline __m128 sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
  const __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  const __m512 w = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(s01, s23, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 x = _mm512_add_ps(w, _mm512_shuffle_f32x4(w, w, _MM_SHUFFLE(1, 0, 3, 2)));
  const __m512 y = _mm512_add_ps(x, _mm512_shuffle_f32x4(x, x, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_castps512_ps128(y);
}
#endif

#if defined(NEO_AVX512) && defined(NEO_NATIVE_BF16)
// Scores of 4 consecutive bf16 keys against a bf16 query (d a multiple of 32), times `scale`:
// vdpbf16ps multiplies bf16 pairs exactly and sums in fp32, with no widening of K.
inline void dot4_bf16(const at::BFloat16* q, const at::BFloat16* k, int d, float scale,
                      float* out) {
  __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                 _mm512_setzero_ps()};
  for (int i = 0; i < d; i += 32) {
    const __m512bh qv = (__m512bh)_mm512_loadu_si512(q + i);
    for (int u = 0; u < 4; ++u)
      a[u] = _mm512_dpbf16_ps(a[u], qv, (__m512bh)_mm512_loadu_si512(k + u * d + i));
  }
  _mm_storeu_ps(out, _mm_mul_ps(sum4(a[0], a[1], a[2], a[3]), _mm_set1_ps(scale)));
}

inline float dot_bf16(const at::BFloat16* q, const at::BFloat16* k, int d, float scale) {
  __m512 a = _mm512_setzero_ps();
  for (int i = 0; i < d; i += 32)
    a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(q + i),
                         (__m512bh)_mm512_loadu_si512(k + i));
  return _mm512_reduce_add_ps(a) * scale;
}
#endif

// Scores of 4 consecutive tokens at once: four independent FMA chains instead of one.
template <typename T>
inline void dot4(const float* q, const T* k, int d, float* out) {
#ifdef NEO_AVX512
  if (d % 16 == 0) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (int i = 0; i < d; i += 16) {
      const __m512 qv = _mm512_loadu_ps(q + i);
      a0 = _mm512_fmadd_ps(qv, load16(k + i), a0);
      a1 = _mm512_fmadd_ps(qv, load16(k + d + i), a1);
      a2 = _mm512_fmadd_ps(qv, load16(k + 2 * d + i), a2);
      a3 = _mm512_fmadd_ps(qv, load16(k + 3 * d + i), a3);
    }
    _mm_storeu_ps(out, sum4(a0, a1, a2, a3));
    return;
  }
#endif
#ifdef NEO_AVX2
  if (d % 8 == 0) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int i = 0; i < d; i += 8) {
      const __m256 qv = _mm256_loadu_ps(q + i);
      a0 = _mm256_fmadd_ps(qv, load8(k + i), a0);
      a1 = _mm256_fmadd_ps(qv, load8(k + d + i), a1);
      a2 = _mm256_fmadd_ps(qv, load8(k + 2 * d + i), a2);
      a3 = _mm256_fmadd_ps(qv, load8(k + 3 * d + i), a3);
    }
    out[0] = hsum(a0); out[1] = hsum(a1); out[2] = hsum(a2); out[3] = hsum(a3);
    return;
  }
#endif
  for (int t = 0; t < 4; ++t) out[t] = dot(q, k + t * d, d);
}

#ifdef NEO_AVX512
// acc[0:16U] += sum_t w[t] * v[t][0:16U] (rows of v `d` apart), in U registers of 16 lanes.
template <int U, typename T>
inline void accumulate_columns(float* acc, const float* w, const T* v, int ntok, int d) {
  __m512 r[U];
  for (int u = 0; u < U; ++u) r[u] = _mm512_loadu_ps(acc + 16 * u);
  for (int t = 0; t < ntok; ++t) {
    const __m512 wv = _mm512_set1_ps(w[t]);
    const T* vt = v + t * d;
    for (int u = 0; u < U; ++u) r[u] = _mm512_fmadd_ps(wv, load16(vt + 16 * u), r[u]);
  }
  for (int u = 0; u < U; ++u) _mm512_storeu_ps(acc + 16 * u, r[u]);
}
#endif

// acc[0:d] += sum_t w[t] * v[t], accumulating 64 columns at a time in registers.
template <typename T>
inline void accumulate_block(float* acc, const float* w, const T* v, int ntok, int d) {
  int c = 0;
#ifdef NEO_AVX512
  for (; c + 128 <= d; c += 128) accumulate_columns<8>(acc + c, w, v + c, ntok, d);
  for (; c + 64 <= d; c += 64) accumulate_columns<4>(acc + c, w, v + c, ntok, d);  // d = 64
#endif
#ifdef NEO_AVX2
  for (; c + 64 <= d; c += 64) {
    __m256 r[8];
    for (int u = 0; u < 8; ++u) r[u] = _mm256_loadu_ps(acc + c + 8 * u);
    for (int t = 0; t < ntok; ++t) {
      const __m256 wv = _mm256_set1_ps(w[t]);
      const T* vt = v + t * d + c;
      for (int u = 0; u < 8; ++u) r[u] = _mm256_fmadd_ps(wv, load8(vt + 8 * u), r[u]);
    }
    for (int u = 0; u < 8; ++u) _mm256_storeu_ps(acc + c + 8 * u, r[u]);
  }
#endif
  for (int t = 0; t < ntok; ++t) {
    const float wt = w[t];
    const T* vt = v + t * d;
    for (int i = c; i < d; ++i) acc[i] += wt * to_float(vt[i]);
  }
}

// exp(x - shift) for n scores in place; returns their sum. AVX2: neo::exp256 (Cephes' expf,
// relative error ~1e-7), scalar expf for the tail.
inline float exp_shifted_sum(float* x, int n, float shift) {
  float sum = 0.f;
  int i = 0;
#ifdef NEO_AVX2
  const __m256 sh = _mm256_set1_ps(shift);
  __m256 total = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 y = neo::exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), sh));
    _mm256_storeu_ps(x + i, y);
    total = _mm256_add_ps(total, y);
  }
  sum = hsum(total);
#endif
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

inline void scale_inplace(float* acc, float s, int d) {
  for (int i = 0; i < d; ++i) acc[i] *= s;
}

// Per query head of one (request, KV head): running max, running sum, output accumulator.
struct HeadState {
  std::vector<float> q, acc, m, l, s;
  void reset(int64_t group, int64_t head_dim, int64_t block_size) {
    q.assign(group * head_dim, 0.f);
    acc.assign(group * head_dim, 0.f);
    m.assign(group, -std::numeric_limits<float>::infinity());
    l.assign(group, 0.f);
    s.assign(group * block_size, 0.f);
  }
};

// Fold one (block, KV head) tile into the running state of that head's query group.
template <typename T>
inline void attend_tile(HeadState& st, const T* kt, const T* vt, int64_t ntok, int64_t group,
                        int64_t head_dim, int64_t block_size) {
  const int d = static_cast<int>(head_dim);
  for (int64_t g = 0; g < group; ++g) {
    float* sg = &st.s[g * block_size];
    const float* qg = &st.q[g * head_dim];
    int64_t t = 0;
    for (; t + 4 <= ntok; t += 4) dot4(qg, kt + t * head_dim, d, sg + t);
    for (; t < ntok; ++t) sg[t] = dot(qg, kt + t * head_dim, d);
    float bmax = -std::numeric_limits<float>::infinity();
    for (t = 0; t < ntok; ++t) bmax = std::max(bmax, sg[t]);
    const float new_m = std::max(st.m[g], bmax);
    const float correction = std::exp(st.m[g] - new_m);  // exp(-inf) = 0 on the first tile
    st.l[g] *= correction;
    scale_inplace(&st.acc[g * head_dim], correction, d);
    st.m[g] = new_m;
    st.l[g] += exp_shifted_sum(sg, static_cast<int>(ntok), new_m);
    accumulate_block(&st.acc[g * head_dim], sg, vt, static_cast<int>(ntok), d);
  }
}

#if defined(NEO_AVX512) && defined(NEO_NATIVE_BF16)
// acc_g[0:32] += sum_t w_g[t] * v[t][0:32] for the G heads of a query group at once: each value
// row is widened once for the whole group, and the 2G accumulators stay in registers.
template <int G>
inline void accumulate_group32(float* acc, int64_t acc_stride, const float* w, int64_t w_stride,
                               const at::BFloat16* v, int ntok, int d) {
  __m512 r[G][2];
  for (int g = 0; g < G; ++g)
    for (int u = 0; u < 2; ++u) r[g][u] = _mm512_loadu_ps(acc + g * acc_stride + 16 * u);
  for (int t = 0; t < ntok; ++t) {
    const __m512 v0 = neo::load_bf16x16(v + t * d), v1 = neo::load_bf16x16(v + t * d + 16);
    for (int g = 0; g < G; ++g) {
      const __m512 wv = _mm512_set1_ps(w[g * w_stride + t]);
      r[g][0] = _mm512_fmadd_ps(wv, v0, r[g][0]);
      r[g][1] = _mm512_fmadd_ps(wv, v1, r[g][1]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int u = 0; u < 2; ++u) _mm512_storeu_ps(acc + g * acc_stride + 16 * u, r[g][u]);
}

// The same for any group: up to 8 heads at a time (accumulate_group32's register budget).
inline void accumulate_group(int64_t group, float* acc, int64_t acc_stride, const float* w,
                             int64_t w_stride, const at::BFloat16* v, int ntok, int d) {
  for (int64_t g0 = 0; g0 < group; g0 += 8) {
    float* a = acc + g0 * acc_stride;
    const float* wg = w + g0 * w_stride;
    switch (std::min<int64_t>(group - g0, 8)) {
      case 1: accumulate_group32<1>(a, acc_stride, wg, w_stride, v, ntok, d); break;
      case 2: accumulate_group32<2>(a, acc_stride, wg, w_stride, v, ntok, d); break;
      case 3: accumulate_group32<3>(a, acc_stride, wg, w_stride, v, ntok, d); break;
      case 4: accumulate_group32<4>(a, acc_stride, wg, w_stride, v, ntok, d); break;
      case 5: accumulate_group32<5>(a, acc_stride, wg, w_stride, v, ntok, d); break;
      case 6: accumulate_group32<6>(a, acc_stride, wg, w_stride, v, ntok, d); break;
      case 7: accumulate_group32<7>(a, acc_stride, wg, w_stride, v, ntok, d); break;
      default: accumulate_group32<8>(a, acc_stride, wg, w_stride, v, ntok, d); break;
    }
  }
}

// The group's queries as bf16 (`buf` holds a copy where they come widened to fp32), or nullptr
// when some value is not a bf16 number (then only the general path is exact).
template <typename Q>
inline const at::BFloat16* query_as_bf16(const Q* qh, int64_t n, std::vector<at::BFloat16>& buf) {
  if constexpr (std::is_same_v<Q, at::BFloat16>) {
    return qh;
  } else {
    buf.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      uint32_t bits;
      std::memcpy(&bits, qh + i, sizeof(bits));
      if ((bits & 0xFFFFu) != 0) return nullptr;
      buf[i] = at::BFloat16(qh[i]);
    }
    return buf.data();
  }
}

// One request's attention for the G bf16 queries of one KV head, over bf16 keys and values,
// in two passes instead of the general path's online softmax: first every score (keys read
// once, exact products by vdpbf16ps, fp32 sums), then one max and one sum per query over all
// of them on 16 lanes at a time, then the values weighted (read once, widened once per group).
// The online softmax folds a tile at a time through a chain of dependent reductions and
// rescales (max, exp of the correction, rescale of the accumulator), which at 16-token
// tiles and 64-value heads kept the core waiting on latencies more than on loads. Writes the
// unnormalised sums into acc [G, D] and each query's 1 / sum of weights into inv [G].
inline void attend_bf16_two_pass(const at::BFloat16* qb, float scale, const at::BFloat16* k_head,
                                 const at::BFloat16* v_head, const int32_t* table, int64_t len,
                                 int64_t block_size, int64_t block_stride, int64_t group,
                                 int64_t head_dim, std::vector<float>& scores, float* acc,
                                 float* inv) {
  const int d = static_cast<int>(head_dim);
  const int64_t tile = block_size * head_dim;
  const int64_t nblocks = (len + block_size - 1) / block_size;
  const int64_t stride = (nblocks * block_size + 15) / 16 * 16;  // one query's scores
  scores.resize(group * stride);
  const int64_t tile_bytes = tile * 2, stride_bytes = block_stride * 2;
  prefetch_blocks(k_head, table, 0, std::min(nblocks, kPrefetchBlocks), stride_bytes, tile_bytes);
  for (int64_t j = 0; j < nblocks; ++j) {  // pass 1: every score
    const at::BFloat16* kt = k_head + table[j] * block_stride;
    if (j + kPrefetchBlocks < nblocks)
      prefetch_l2(k_head + table[j + kPrefetchBlocks] * block_stride, tile_bytes);
    const int64_t ntok = std::min<int64_t>(block_size, len - j * block_size);
    for (int64_t g = 0; g < group; ++g) {
      float* sg = &scores[g * stride + j * block_size];
      const at::BFloat16* qg = qb + g * head_dim;
      int64_t t = 0;
      for (; t + 4 <= ntok; t += 4) dot4_bf16(qg, kt + t * head_dim, d, scale, sg + t);
      for (; t < ntok; ++t) sg[t] = dot_bf16(qg, kt + t * head_dim, d, scale);
    }
  }
  for (int64_t g = 0; g < group; ++g) {  // the softmax's weights, unnormalised
    float* sg = &scores[g * stride];
    __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t i = 0; i < len; i += 16) {
      const __mmask16 valid = len - i >= 16 ? static_cast<__mmask16>(0xFFFF)
                                            : static_cast<__mmask16>((1u << (len - i)) - 1);
      m = _mm512_mask_max_ps(m, valid, m, _mm512_maskz_loadu_ps(valid, sg + i));
    }
    const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(m));
    __m512 total = _mm512_setzero_ps();
    for (int64_t i = 0; i < len; i += 16) {
      const __mmask16 valid = len - i >= 16 ? static_cast<__mmask16>(0xFFFF)
                                            : static_cast<__mmask16>((1u << (len - i)) - 1);
      const __m512 e = _mm512_maskz_mov_ps(
          valid, neo::exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(valid, sg + i), shift)));
      _mm512_mask_storeu_ps(sg + i, valid, e);
      total = _mm512_add_ps(total, e);
    }
    const float sum = _mm512_reduce_add_ps(total);
    inv[g] = sum > 0.f ? 1.f / sum : 0.f;
  }
  std::fill(acc, acc + group * head_dim, 0.f);
  prefetch_blocks(v_head, table, 0, std::min(nblocks, kPrefetchBlocks), stride_bytes, tile_bytes);
  for (int64_t j = 0; j < nblocks; ++j) {  // pass 2: the values, weighted
    const at::BFloat16* vt = v_head + table[j] * block_stride;
    if (j + kPrefetchBlocks < nblocks)
      prefetch_l2(v_head + table[j + kPrefetchBlocks] * block_stride, tile_bytes);
    const int ntok = static_cast<int>(std::min<int64_t>(block_size, len - j * block_size));
    for (int c = 0; c < d; c += 32)
      accumulate_group(group, acc + c, head_dim, &scores[j * block_size], stride, vt + c, ntok, d);
  }
}
#endif

// One query head's output: its accumulated values times 1 / its sum of weights, in Q.
template <typename Q>
inline void store_head(Q* o, const float* acc, float inv, int64_t head_dim) {
  for (int64_t i = 0; i < head_dim; ++i) o[i] = Q(acc[i] * inv);
}

// Q: the query's and the output's element type (float, or at::BFloat16 for a bf16 model:
// its query is then scored as it is and its output rounded once, as torch's cast would).
template <typename T, typename Q>
void attend(const Q* q, const T* k_cache, const T* v_cache, const int32_t* tables,
            const int32_t* lens, Q* out, int64_t batch, int64_t q_row, int64_t q_heads,
            int64_t kv_heads,
            int64_t block_size, int64_t head_dim, int64_t max_blocks, float scale,
            int num_threads) {
  const int64_t group = q_heads / kv_heads;
  const int64_t tile = block_size * head_dim;  // one (block, head) tile
  const int64_t block_stride = kv_heads * tile;
  // A task walks one request over a run of adjacent KV heads: in this layout the tiles of
  // adjacent heads are adjacent in memory, so a task streams long contiguous runs that the
  // hardware prefetchers follow. Runs are as long as possible while leaving every thread
  // several tasks to balance.
  int64_t runs = 1;
  while (runs < kv_heads && batch * runs < 4 * static_cast<int64_t>(num_threads)) runs *= 2;
  runs = std::min(runs, kv_heads);
  const int64_t heads_per_run = (kv_heads + runs - 1) / runs;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
  for (int64_t task = 0; task < batch * runs; ++task) {
    const int64_t b = task / runs;
    const int64_t h0 = (task % runs) * heads_per_run;
    const int64_t h1 = std::min(kv_heads, h0 + heads_per_run);
    if (h0 >= h1) continue;
    const int64_t len = lens[b];
#if defined(NEO_AVX512) && defined(NEO_NATIVE_BF16)
    if constexpr (std::is_same_v<T, at::BFloat16>) {
      thread_local std::vector<at::BFloat16> q_buf;
      thread_local std::vector<float> scores, acc, inv;
      const int64_t n = (h1 - h0) * group * head_dim;
      const at::BFloat16* qb =  // vdpbf16ps takes 32 values at a time
          head_dim % 32 == 0 ? query_as_bf16(q + b * q_row + h0 * group * head_dim, n, q_buf)
                             : nullptr;
      if (qb != nullptr) {
        acc.resize(group * head_dim);
        inv.resize(group);
        for (int64_t h = h0; h < h1; ++h) {
          attend_bf16_two_pass(qb + (h - h0) * group * head_dim, scale, k_cache + h * tile,
                               v_cache + h * tile, tables + b * max_blocks, len, block_size,
                               block_stride, group, head_dim, scores, acc.data(), inv.data());
          for (int64_t g = 0; g < group; ++g)
            store_head(out + (b * q_heads + h * group + g) * head_dim, &acc[g * head_dim],
                       inv[g], head_dim);
        }
        continue;
      }
    }
#endif
    std::vector<HeadState> state(h1 - h0);
    for (int64_t h = h0; h < h1; ++h) {
      HeadState& st = state[h - h0];
      st.reset(group, head_dim, block_size);
      for (int64_t g = 0; g < group; ++g)  // fold the softmax scale into q once
        for (int64_t i = 0; i < head_dim; ++i)
          st.q[g * head_dim + i] =
              to_float(q[b * q_row + (h * group + g) * head_dim + i]) * scale;
    }
    const int64_t nblocks = (len + block_size - 1) / block_size;
    const int32_t* table = tables + b * max_blocks;
    const int64_t run_bytes =
        std::min((h1 - h0) * tile * static_cast<int64_t>(sizeof(T)), kPrefetchRunBytes);
    const int64_t stride_bytes = block_stride * static_cast<int64_t>(sizeof(T));
    const int64_t first = std::min(nblocks, kPrefetchBlocks);
    prefetch_blocks(k_cache + h0 * tile, table, 0, first, stride_bytes, run_bytes);
    prefetch_blocks(v_cache + h0 * tile, table, 0, first, stride_bytes, run_bytes);
    for (int64_t j = 0; j < nblocks; ++j) {
      const int64_t block = table[j];
      const int64_t ntok = std::min<int64_t>(block_size, len - j * block_size);
      if (j + kPrefetchBlocks < nblocks) {
        const int64_t next = table[j + kPrefetchBlocks] * block_stride + h0 * tile;
        prefetch_l2(k_cache + next, run_bytes);
        prefetch_l2(v_cache + next, run_bytes);
      }
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t offset = block * block_stride + h * tile;
        attend_tile(state[h - h0], k_cache + offset, v_cache + offset, ntok, group, head_dim,
                    block_size);
      }
    }
    for (int64_t h = h0; h < h1; ++h) {
      const HeadState& st = state[h - h0];
      for (int64_t g = 0; g < group; ++g)
        store_head(out + (b * q_heads + h * group + g) * head_dim, &st.acc[g * head_dim],
                   st.l[g] > 0.f ? 1.f / st.l[g] : 0.f, head_dim);
    }
  }
}

}  // namespace

// q: [B, Hq, D] fp32 or bf16, heads contiguous within a row (rows may be strided: a view of
// a fused projection); caches: [N, Hkv, block_size, D]; block_tables: [B, max_blocks] int32;
// context_lens: [B] int32; out: [B, Hq, D] contiguous, q's dtype (written).
void decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                      torch::Tensor block_tables, torch::Tensor context_lens, torch::Tensor out,
                      double scale, int64_t num_threads) {
  TORCH_CHECK((q.dtype() == torch::kFloat32 || q.dtype() == torch::kBFloat16) &&
                  out.dtype() == q.dtype(),
              "q and out must be fp32, or both bf16");
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1 && q.stride(1) == q.size(2),
              "q: [B, Hq, D] with contiguous heads");
  TORCH_CHECK(out.is_contiguous() && k_cache.is_contiguous() &&
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
    auto with_q = [&](auto q_tag) {
      using Q = decltype(q_tag);
      attend<T, Q>(reinterpret_cast<const Q*>(q.data_ptr()),
                   reinterpret_cast<const T*>(k_cache.data_ptr()),
                   reinterpret_cast<const T*>(v_cache.data_ptr()),
                   block_tables.data_ptr<int32_t>(), context_lens.data_ptr<int32_t>(),
                   reinterpret_cast<Q*>(out.data_ptr()), batch, q.stride(0), q_heads, kv_heads,
                   block_size, head_dim, block_tables.size(1), static_cast<float>(scale),
                   threads);
    };
    if (q.scalar_type() == torch::kBFloat16) {
      with_q(at::BFloat16{});
    } else {
      with_q(float{});
    }
  };
  switch (k_cache.scalar_type()) {
    case torch::kFloat32: run(float{}); break;
    case torch::kFloat16: run(at::Half{}); break;
    case torch::kBFloat16: run(at::BFloat16{}); break;
    default: TORCH_CHECK(false, "KV cache dtype must be float32, float16 or bfloat16");
  }
}

// Store k, v [T, Hkv, D] at token slots (block, offset) of one layer's paged caches
// [blocks, Hkv, block_size, D], all of one dtype: one copy of D elements per token and head,
// on the calling thread (rows of k and v may be strided: views of a fused projection). What
// `cache[blocks, :, offsets, :] = k` does, without torch's
// advanced-indexing machinery (two index tensors around a slice) and its thread pool.
void write_kv(torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor blocks,
              torch::Tensor offsets, torch::Tensor k, torch::Tensor v) {
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "write_kv: contiguous caches");
  TORCH_CHECK(k.dim() == 3 && v.dim() == 3 && k.stride(2) == 1 && v.stride(2) == 1 &&
                  k.stride(1) == k.size(2) && v.stride(1) == v.size(2),
              "write_kv: k, v [T, Hkv, D] with contiguous heads (rows may be strided)");
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == v_cache.scalar_type() &&
                  k.scalar_type() == v.scalar_type(),
              "write_kv: k, v and the caches must share a dtype");
  TORCH_CHECK(blocks.scalar_type() == torch::kInt64 && offsets.scalar_type() == torch::kInt64,
              "write_kv: slots must be int64");
  TORCH_CHECK(k_cache.dim() == 4 && k.dim() == 3 && k.sizes() == v.sizes(), "write_kv: bad ranks");
  const int64_t tokens = k.size(0), heads = k.size(1), dim = k.size(2);
  const int64_t num_blocks = k_cache.size(0), block_size = k_cache.size(2);
  TORCH_CHECK(k_cache.size(1) == heads && k_cache.size(3) == dim && blocks.numel() == tokens &&
                  offsets.numel() == tokens,
              "write_kv: shape mismatch");
  const int64_t bytes = dim * k.element_size();
  const int64_t row = bytes, head_stride = block_size * bytes, block_stride = heads * head_stride;
  const int64_t* bp = blocks.data_ptr<int64_t>();
  const int64_t* op = offsets.data_ptr<int64_t>();
  char* kc = static_cast<char*>(k_cache.data_ptr());
  char* vc = static_cast<char*>(v_cache.data_ptr());
  const char* ks = static_cast<const char*>(k.data_ptr());
  const char* vs = static_cast<const char*>(v.data_ptr());
  const int64_t k_row = k.stride(0) * k.element_size(), v_row = v.stride(0) * v.element_size();
  for (int64_t t = 0; t < tokens; ++t) {
    TORCH_CHECK(0 <= bp[t] && bp[t] < num_blocks && 0 <= op[t] && op[t] < block_size,
                "write_kv: slot out of range");
    const int64_t base = bp[t] * block_stride + op[t] * row;
    for (int64_t h = 0; h < heads; ++h) {
      std::memcpy(kc + base + h * head_stride, ks + t * k_row + h * bytes, bytes);
      std::memcpy(vc + base + h * head_stride, vs + t * v_row + h * bytes, bytes);
    }
  }
}

bool built_with_avx2() {
#ifdef NEO_AVX2
  return true;
#else
  return false;
#endif
}
