// Causal prefill attention on the CPU, bf16 (native bf16 dot products, AVX512-BF16) or fp32
// (FMA on 16 lanes with AVX-512, on 8 with AVX2): a flash-attention kernel (scores, online
// softmax and the weighted sum of V one tile of keys at a time; no T x T matrix).
//
// Why: on CPUs without AMX, torch's own CPU flash attention runs bf16 at ~55-110 GFLOP/s for
// SmolLM2's heads (D = 64) at 256-2,000-token prompts, while the same machine's bf16 GEMMs
// reach ~400: prefill attention took a third of neo_engine's time on a trace of
// conversation-length prompts. In fp32 torch reaches ~50-125 GFLOP/s there against fp32
// GEMMs' ~190, one call per prompt (benchmarks/prefill_attention.py measures both dtypes side
// by side with torch).
//
// How: K and V of each KV head are first repacked so that one vector instruction does useful
// work without any horizontal sum:
// - bf16: K in blocks of 16 keys, per pair of head dims (d, d+1): lane j holds (k_j[d],
//   k_j[d+1]); a query row's pair (q[d], q[d+1]) broadcast to every lane then adds 16 scores'
//   worth of two products each (vdpbf16ps). V per pair of keys (j, j+1), per 16 head dims:
//   lane n holds (v_j[n], v_{j+1}[n]); the pair of probabilities (p_j, p_{j+1}) broadcast then
//   adds to 16 output dims.
// - fp32: K in blocks of one key per lane (16 with AVX-512, 8 with AVX2), per head dim d: lane
//   j holds k_j[d]; q[d] broadcast adds one product to a block's scores (vfmadd). V per key,
//   its head dims contiguous; p_j broadcast adds to a vector of output dims. With AVX2 (16
//   vector registers, not 32) a register-blocked pass takes 2 query rows instead of 4, so that
//   its score and value accumulators stay in registers: under NEO_CPU_ISA=avx2 on an AMD EPYC
//   1.06-2.07x torch's SDPA (benchmarks/results/prefill_attention_float32_avx2cap.json).
// Work items are (query head, block of 16 query rows), the longest (last) blocks first,
// handed out dynamically: causal blocks differ in length. Per item, tiles of four K blocks up to
// the block's last row (the last tile cut to the K blocks that reach it): scores in fp32,
// scaled, masked causally, an online softmax in fp32 (running max and sum per row), the
// probabilities in the input's dtype for the V product (bf16 rounds them, as torch's flash
// kernel does for bf16), the output accumulated in fp32 and divided by the sum at the end, then
// rounded to the input's dtype (bf16: nearest even). GQA: query heads share their KV head's
// packing. A batch's whole prompts can go in one call (`prefill_attention_ranges`), in groups
// whose packed K/V stay in the caches.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "avx512_math.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define NEO_PREFILL_F32 1
namespace {

// The fp32 vector the kernel computes in: 16 lanes with AVX-512, 8 with AVX2 (16 registers
// instead of 32, so fewer query rows per register-blocked pass). Everything width-dependent
// goes through it; a K block holds one key per lane.
#if defined(__AVX512F__)
struct F32 {
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int kWidth = 16;
  static constexpr int kRowGroup = 4;  // query rows per register-blocked pass
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V x) { _mm512_storeu_ps(p, x); }
  static V fmadd(V a, V b, V acc) { return _mm512_fmadd_ps(a, b, acc); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static float reduce_max(V x) { return _mm512_reduce_max_ps(x); }
  static float reduce_add(V x) { return _mm512_reduce_add_ps(x); }
  static V exp(V x) { return neo::exp512(x); }
  static Mask all() { return 0xFFFF; }
  // Lanes whose key (first_key + lane) is at or before `row`.
  static Mask keys_upto(int first_key, int row) {
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    return _mm512_cmple_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(first_key)),
                                   _mm512_set1_epi32(row));
  }
  static V select(Mask m, V x, V otherwise) { return _mm512_mask_mov_ps(otherwise, m, x); }
  static V keep(Mask m, V x) { return _mm512_maskz_mov_ps(m, x); }
};
#else
struct F32 {
  using V = __m256;
  using Mask = __m256;  // all ones in a lane kept
  static constexpr int kWidth = 8;
  static constexpr int kRowGroup = 2;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V x) { _mm256_storeu_ps(p, x); }
  static V fmadd(V a, V b, V acc) { return _mm256_fmadd_ps(a, b, acc); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static float reduce_max(V x) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
  }
  static float reduce_add(V x) {
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
  }
  static V exp(V x) { return neo::exp256(x); }
  static Mask all() { return _mm256_castsi256_ps(_mm256_set1_epi32(-1)); }
  static Mask keys_upto(int first_key, int row) {
    const __m256i keys = _mm256_add_epi32(_mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm256_set1_epi32(first_key));
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(row + 1), keys));
  }
  static V select(Mask m, V x, V otherwise) { return _mm256_blendv_ps(otherwise, x, m); }
  static V keep(Mask m, V x) { return _mm256_and_ps(m, x); }
};
#endif

using bf16 = at::BFloat16;
using Vf = F32::V;
constexpr int kKeyBlock = F32::kWidth;      // keys per packed K block (one per lane)
constexpr int kBlocksPerTile = 4;           // K blocks per softmax tile
constexpr int kTile = kBlocksPerTile * kKeyBlock;  // keys per softmax tile
constexpr int kRows = 16;                   // query rows per work item
constexpr int kRowGroup = F32::kRowGroup;   // query rows per register-blocked pass
constexpr int kMaxHeadDim = 256;
constexpr int64_t kGroupBytes = 1 << 20;  // packed K + V of the prompts attended together

template <class E>
struct Strided {  // rows [T, H, D] with D contiguous
  const E* data;
  int64_t row, head;
  const E* at(int64_t t, int64_t h) const { return data + t * row + h * head; }
};

// Both layouts put a block of 16 keys in 16 * dim elements and a key's V in dim elements
// (bf16: a pair of keys in 2 * dim), so a tile's K and V start at element j0 * dim of its
// head's packing in either dtype. `Lanes<E>` is what differs in the arithmetic: how many
// values of E one 32-bit lane holds (bf16: a pair, fp32: one), and the vector load, broadcast
// and multiply-add over them.
template <class E>
struct Lanes;

template <>
struct Lanes<float> {
  using Vec = Vf;
  static constexpr int kPerLane = 1;
  static Vec load(const float* p) { return F32::load(p); }
  static Vec broadcast(const float* p) { return F32::set1(*p); }
  static Vf madd(Vf acc, Vec a, Vec b) { return F32::fmadd(a, b, acc); }
};

// fp32: Kp[h][block][dim][lane] and Vp[h][key][dim], zero past the prompt, for packing item
// (h, block).
void pack(const Strided<float>& k, const Strided<float>& v, int64_t tokens, int64_t dim,
          int64_t padded, float* kp, float* vp, int64_t item) {
  const int64_t blocks = padded / kKeyBlock, head = padded * dim;
  const int64_t h = item / blocks, b = item % blocks;
  float* kb = kp + h * head + b * kKeyBlock * dim;
  float* vb = vp + h * head + b * kKeyBlock * dim;
  for (int lane = 0; lane < kKeyBlock; ++lane) {
    const int64_t t = b * kKeyBlock + lane;
    if (t >= tokens) {
      for (int64_t d = 0; d < dim; ++d) kb[d * kKeyBlock + lane] = 0.f;
      std::fill(vb + lane * dim, vb + (lane + 1) * dim, 0.f);
      continue;
    }
    const float* krow = k.at(t, h);
    for (int64_t d = 0; d < dim; ++d) kb[d * kKeyBlock + lane] = krow[d];
    std::memcpy(vb + lane * dim, v.at(t, h), dim * sizeof(float));
  }
}

inline void store_probs(Vf p, float* dst) { F32::store(dst, p); }

#if defined(NEO_NATIVE_BF16)
inline __m512i broadcast_pair(const bf16* two) {
  int32_t bits;
  std::memcpy(&bits, two, sizeof(bits));
  return _mm512_set1_epi32(bits);
}

inline __m512bh as_bh(__m512i v) { return (__m512bh)v; }

template <>
struct Lanes<bf16> {
  using Vec = __m512bh;
  static constexpr int kPerLane = 2;
  static Vec load(const bf16* p) { return as_bh(_mm512_loadu_si512(p)); }
  static Vec broadcast(const bf16* p) { return as_bh(broadcast_pair(p)); }
  static __m512 madd(__m512 acc, Vec a, Vec b) { return _mm512_dpbf16_ps(acc, a, b); }
};

// Kp[h][block][pair][lane][2] and Vp[h][key pair][chunk][lane][2], zero past the prompt, for
// packing item (h, block). Copies pairs of bf16 as 32-bit words (a K pair is two adjacent head
// dims of one key).
void pack(const Strided<bf16>& k, const Strided<bf16>& v, int64_t tokens, int64_t dim,
          int64_t padded, bf16* kp, bf16* vp, int64_t item) {
  const int64_t pairs = dim / 2, blocks = padded / kKeyBlock, head = padded * dim;
  const int64_t h = item / blocks, b = item % blocks;
  uint32_t* kb = reinterpret_cast<uint32_t*>(kp + h * head + b * kKeyBlock * dim);
  uint16_t* vb = reinterpret_cast<uint16_t*>(vp + h * head + b * kKeyBlock * dim);
  for (int lane = 0; lane < kKeyBlock; ++lane) {
    const int64_t t = b * kKeyBlock + lane;
    const int e = lane & 1;  // V: this key's place in its pair
    uint16_t* vpair = vb + (lane / 2) * 2 * dim;
    if (t >= tokens) {
      for (int64_t p = 0; p < pairs; ++p) kb[p * kKeyBlock + lane] = 0;
      for (int64_t n = 0; n < dim; ++n) vpair[2 * n + e] = 0;
      continue;
    }
    uint32_t krow[kMaxHeadDim / 2];
    std::memcpy(krow, k.at(t, h), dim * sizeof(bf16));
    for (int64_t p = 0; p < pairs; ++p) kb[p * kKeyBlock + lane] = krow[p];
    uint16_t vrow[kMaxHeadDim];
    std::memcpy(vrow, v.at(t, h), dim * sizeof(bf16));
    // Chunk c of 16 dims, lane n: (v_j[16c + n], v_j+1[16c + n]) at [(16c + n) * 2 + e].
    for (int64_t n = 0; n < dim; ++n) vpair[2 * n + e] = vrow[n];
  }
}

inline void store_probs(__m512 p, bf16* dst) {
  const __m256bh pb = _mm512_cvtneps_pbh(p);
  std::memcpy(dst, &pb, sizeof(pb));
}
#endif  // NEO_NATIVE_BF16

// The two loops below are unrolled by 4 and keep their accumulators in registers (a constant
// count of them: `values_pass`): with SmolLM2's heads at 128-2,048-token prompts that took the
// fp32 kernel to 0.46-0.62x its time (from below torch's SDPA speed to ~175 GFLOP/s, about this
// VM's fp32 GEMM peak) and the bf16 one to ~0.7-0.8x (ad hoc, side by side, AMD EPYC with
// AVX512-BF16). Unrolled alone the values' loop gained less (0.8-1.0x); its accumulators, with
// a run-time count, went through the stack.

// Scores of rows [r, r + kRowGroup) (clamped to `last`) against the tile's first `kBlocks`
// K blocks (fewer than the tile's four where the query block ends before the tile does).
template <int kBlocks, class E>
inline void tile_scores(const Strided<E>& q, int64_t head, int64_t r, int64_t last, const E* kt,
                        int64_t dim, Vf (&acc)[kRowGroup][kBlocksPerTile]) {
  using L = Lanes<E>;
  const E* rows[kRowGroup];
  for (int i = 0; i < kRowGroup; ++i) rows[i] = q.at(std::min(r + i, last), head);
  for (int i = 0; i < kRowGroup; ++i)
    for (int b = 0; b < kBlocks; ++b) acc[i][b] = F32::zero();
  const int64_t block = dim * kKeyBlock, steps = dim / L::kPerLane;
#pragma GCC unroll 4
  for (int64_t s = 0; s < steps; ++s) {
    typename L::Vec kv[kBlocks];
    for (int b = 0; b < kBlocks; ++b)
      kv[b] = L::load(kt + b * block + s * kKeyBlock * L::kPerLane);
    for (int i = 0; i < kRowGroup; ++i) {
      const typename L::Vec qs = L::broadcast(rows[i] + s * L::kPerLane);
      for (int b = 0; b < kBlocks; ++b) acc[i][b] = L::madd(acc[i][b], qs, kv[b]);
    }
  }
}

// out_acc[row] = out_acc[row] * alpha[row] + P[row] @ V(tile), rows [0, rows) of a group,
// over the tile's first kKeys keys, in passes of kChunks x kWidth output dims.
template <int kKeys, int kChunks, class E>
__attribute__((always_inline)) inline void values_pass(const E* probs, const float* alpha,
                                                       const E* vt, int64_t dim, int rows,
                                                       float* out_acc) {
  using L = Lanes<E>;
  constexpr int W = F32::kWidth;
  for (int64_t c0 = 0; c0 < dim / W; c0 += kChunks) {
    Vf acc[kRowGroup][kChunks];
    for (int i = 0; i < kRowGroup; ++i)
      for (int c = 0; c < kChunks; ++c)
        acc[i][c] = i < rows ? F32::mul(F32::load(out_acc + i * dim + (c0 + c) * W),
                                        F32::set1(alpha[i]))
                             : F32::zero();
#pragma GCC unroll 4
    for (int s = 0; s < kKeys / L::kPerLane; ++s) {
      const E* vrow = vt + s * L::kPerLane * dim;
      typename L::Vec vv[kChunks];
      for (int c = 0; c < kChunks; ++c) vv[c] = L::load(vrow + (c0 + c) * W * L::kPerLane);
      for (int i = 0; i < kRowGroup; ++i) {
        const typename L::Vec ps = L::broadcast(probs + i * kTile + s * L::kPerLane);
        for (int c = 0; c < kChunks; ++c) acc[i][c] = L::madd(acc[i][c], ps, vv[c]);
      }
    }
    for (int i = 0; i < rows; ++i)
      for (int c = 0; c < kChunks; ++c)
        F32::store(out_acc + i * dim + (c0 + c) * W, acc[i][c]);
  }
}

template <int kKeys, class E>
__attribute__((always_inline)) inline void tile_values(const E* probs /* [kRowGroup][kTile] */,
                                                       const float* alpha, const E* vt,
                                                       int64_t dim, int rows,
                                                       float* out_acc /* [rows][dim] */) {
  if (dim % (4 * F32::kWidth) == 0)
    values_pass<kKeys, 4>(probs, alpha, vt, dim, rows, out_acc);
  else
    values_pass<kKeys, 2>(probs, alpha, vt, dim, rows, out_acc);
}

// A query block's online-softmax state, per row, through its tiles.
struct RowState {
  float max[kRows], alpha[kRows];
  Vf sum[kRows];  // per lane; summed across lanes at the end
};

// Rows [r0, r0 + rows) against the tile at key j0, over its first kBlocks K blocks: scores,
// scaled and masked causally, the online softmax's update of `st`, and the probabilities
// (in E) into probs [rows][kTile]. A template so that a row's kBlocks score vectors stay in
// registers.
template <int kBlocks, class E>
__attribute__((always_inline)) inline void tile_softmax(const Strided<E>& q, int64_t head,
                                                        int64_t r0, int rows, int64_t j0,
                                                        const E* kt, int64_t dim, float scale,
                                                        RowState& st, E* __restrict probs) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const Vf vscale = F32::set1(scale), neg_inf = F32::set1(kNegInf);
  const bool diagonal = j0 + kTile - 1 > r0;  // some key past some row: mask
  for (int g = 0; g < rows; g += kRowGroup) {
    Vf s[kRowGroup][kBlocksPerTile];
    tile_scores<kBlocks>(q, head, r0 + g, r0 + rows - 1, kt, dim, s);
    const int in_group = std::min(kRowGroup, rows - g);
    for (int i = 0; i < in_group; ++i) {
      const int row = g + i;
      typename F32::Mask keep[kBlocks];
      Vf tile_max = neg_inf;
      for (int b = 0; b < kBlocks; ++b) {
        s[i][b] = F32::mul(s[i][b], vscale);
        keep[b] = F32::all();
        if (diagonal) {
          keep[b] = F32::keys_upto(int(j0 + kKeyBlock * b), int(r0 + row));
          s[i][b] = F32::select(keep[b], s[i][b], neg_inf);
        }
        tile_max = F32::max(tile_max, s[i][b]);
      }
      const float new_max = std::max(st.max[row], F32::reduce_max(tile_max));
      st.alpha[row] = st.max[row] == kNegInf ? 0.f : std::exp(st.max[row] - new_max);
      st.max[row] = new_max;
      const Vf m = F32::set1(new_max);
      Vf sum = F32::mul(st.sum[row], F32::set1(st.alpha[row]));
      for (int b = 0; b < kBlocks; ++b) {
        const Vf p = F32::keep(keep[b], F32::exp(F32::sub(s[i][b], m)));
        store_probs(p, probs + row * kTile + kKeyBlock * b);
        sum = F32::add(sum, p);
      }
      st.sum[row] = sum;
    }
  }
}

// One tile of kBlocks K blocks for a query block: its softmax, then its values.
template <int kBlocks, class E>
__attribute__((always_inline)) inline void tile(const Strided<E>& q, int64_t head, int64_t r0,
                                                int rows, int64_t j0, const E* kt, const E* vt,
                                                int64_t dim, float scale, RowState& st,
                                                E* probs, float* acc) {
  tile_softmax<kBlocks>(q, head, r0, rows, j0, kt, dim, scale, st, probs);
  for (int g = 0; g < rows; g += kRowGroup)
    tile_values<kKeyBlock * kBlocks>(probs + g * kTile, st.alpha + g, vt, dim,
                              std::min(kRowGroup, rows - g), acc + g * dim);
}

template <class E>
void attend_block(const Strided<E>& q, int64_t head, int64_t kv_head, int64_t r0, int64_t r1,
                  int64_t dim, int64_t padded, const E* kp, const E* vp, float scale, E* out,
                  int64_t out_row) {
  alignas(64) E probs[kRows * kTile];
  alignas(64) float acc[kRows * kMaxHeadDim];
  RowState st;
  const int rows = static_cast<int>(r1 - r0);
  std::fill(acc, acc + rows * dim, 0.f);
  std::fill(st.max, st.max + kRows, -std::numeric_limits<float>::infinity());
  for (int i = 0; i < kRows; ++i) st.sum[i] = F32::zero();
  const E* kh = kp + kv_head * padded * dim;
  const E* vh = vp + kv_head * padded * dim;
  for (int64_t j0 = 0; j0 < r1; j0 += kTile) {
    const E* kt = kh + j0 * dim;  // the tile's K blocks of 16 keys
    const E* vt = vh + j0 * dim;  // its keys' V
    // Only the K blocks up to the block's last row: keys past it are masked in every row, so
    // a block of only such keys adds nothing (a 16-row query block ends inside its last tile
    // in 3 of 4 cases; at a 128-token prompt whole tiles computed 1.5x the causal scores).
    const int blocks =
        static_cast<int>((std::min<int64_t>(kTile, r1 - j0) + kKeyBlock - 1) / kKeyBlock);
    switch (blocks) {
      case 1: tile<1>(q, head, r0, rows, j0, kt, vt, dim, scale, st, probs, acc); break;
      case 2: tile<2>(q, head, r0, rows, j0, kt, vt, dim, scale, st, probs, acc); break;
      case 3: tile<3>(q, head, r0, rows, j0, kt, vt, dim, scale, st, probs, acc); break;
      default: tile<kBlocksPerTile>(q, head, r0, rows, j0, kt, vt, dim, scale, st, probs, acc);
    }
  }
  for (int row = 0; row < rows; ++row) {
    E* o = out + (r0 + row) * out_row + head * dim;
    const float inv = 1.f / F32::reduce_add(st.sum[row]);
    for (int64_t d = 0; d < dim; ++d) o[d] = E(acc[row * dim + d] * inv);
  }
}

// The kernel for element type E (checks done by the caller).
template <class E>
void attend_ranges(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                   const at::Tensor& ranges, float s, int64_t num_threads) {
  const int64_t heads = q.size(1), dim = q.size(2), kv_heads = k.size(1);
  const int64_t prompts = ranges.size(0);
  const int64_t* r = ranges.data_ptr<int64_t>();
  // Per prompt: its first row, its length, and its packed K/V's size (elements, K or V).
  std::vector<int64_t> first(prompts), length(prompts), packed(prompts);
  int64_t most = 0;
  for (int64_t p = 0; p < prompts; ++p) {
    first[p] = r[2 * p];
    length[p] = r[2 * p + 1] - r[2 * p];
    packed[p] = kv_heads * ((length[p] + kTile - 1) / kTile * kTile) * dim;
    most = std::max(most, length[p]);
  }
  if (most == 0) return;
  const Strided<E> qs{q.data_ptr<E>(), q.stride(0), q.stride(1)};
  const Strided<E> ks{k.data_ptr<E>(), k.stride(0), k.stride(1)};
  const Strided<E> vs{v.data_ptr<E>(), v.stride(0), v.stride(1)};
  auto rows_of = [&](const Strided<E>& x, int64_t p) {
    return Strided<E>{x.data + first[p] * x.row, x.row, x.head};
  };
  const int64_t group = heads / kv_heads;
  E* o = out.data_ptr<E>();
  std::vector<E> kp, vp;
  std::vector<int64_t> packed_at;
  std::vector<std::pair<int64_t, int64_t>> packing;  // (prompt, its packing item)
  struct Item {
    int64_t prompt, head, r0, r1;
  };
  std::vector<Item> items;
  // Prompts in groups whose packed K and V stay within kGroupBytes (at least one prompt each):
  // a group is packed, then attended while its K/V are still in the caches. Packing every
  // prompt of a batch first streamed them out (32 prompts of 128 tokens with Llama-3-8B's heads
  // pack 16 MB in bf16), and one call then took 1.10x the time of a call per prompt.
  constexpr int64_t kBytes = sizeof(E);
  for (int64_t g0 = 0; g0 < prompts;) {
    int64_t g1 = g0, bytes = 0;
    packed_at.assign(1, 0);
    while (g1 < prompts && (g1 == g0 || bytes + 2 * packed[g1] * kBytes <= kGroupBytes)) {
      bytes += 2 * packed[g1] * kBytes;
      packed_at.push_back(packed_at.back() + packed[g1]);
      ++g1;
    }
    kp.resize(packed_at.back());
    vp.resize(packed_at.back());
    packing.clear();
    items.clear();
    for (int64_t p = g0; p < g1; ++p) {
      for (int64_t i = 0; i < packed[p] / (kKeyBlock * dim); ++i) packing.emplace_back(p, i);
      for (int64_t r0 = 0; r0 < length[p]; r0 += kRows)
        for (int64_t h = 0; h < heads; ++h)
          items.push_back({p, h, r0, std::min(length[p], r0 + kRows)});
    }
    // Longest (last) blocks first.
    std::stable_sort(items.begin(), items.end(),
                     [](const Item& a, const Item& b) { return a.r1 > b.r1; });
    at::parallel_for(0, static_cast<int64_t>(packing.size()), 8, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const auto [p, item] = packing[i];
        const int64_t padded = packed[p] / (kv_heads * dim);
        pack(rows_of(ks, p), rows_of(vs, p), length[p], dim, padded,
             kp.data() + packed_at[p - g0], vp.data() + packed_at[p - g0], item);
      }
    });
    // Causal blocks differ in length: torch's pool runs one task per thread, and each task
    // takes the next item (longest first) until none is left. Torch's own pool, not a second
    // OpenMP runtime, whose idle threads would spin beside torch's in the next op.
    const int64_t count = static_cast<int64_t>(items.size());
    std::atomic<int64_t> next{0};
    const int64_t tasks =  // a short prompt's few items are not worth waking the pool for
        most < kTile && prompts == 1
            ? 1
            : std::min<int64_t>(std::max<int64_t>(1, num_threads), count);
    at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
      for (int64_t i = next++; i < count; i = next++) {
        const Item& it = items[i];
        const int64_t padded = packed[it.prompt] / (kv_heads * dim);
        const int64_t at = packed_at[it.prompt - g0];
        attend_block(rows_of(qs, it.prompt), it.head, it.head / group, it.r0, it.r1, dim,
                     padded, kp.data() + at, vp.data() + at, s,
                     o + first[it.prompt] * heads * dim, heads * dim);
      }
    });
    g0 = g1;
  }
}

}  // namespace
#endif  // NEO_PREFILL_F32

namespace {
// Whether this build has the kernel for `dtype`: bf16 needs AVX512-BF16, fp32 AVX-512F or
// AVX2 with FMA.
bool covers(at::ScalarType dtype) {
#if defined(NEO_NATIVE_BF16)
  if (dtype == at::kBFloat16) return true;
#endif
#if defined(NEO_PREFILL_F32)
  if (dtype == at::kFloat) return true;
#endif
  return false;
}
}  // namespace

// `covers` by the dtype's name ("bfloat16" or "float32"), for Python. Elsewhere torch's SDPA
// runs instead.
bool prefill_attention_covers(const std::string& dtype) {
  return (dtype == "bfloat16" && covers(at::kBFloat16)) ||
         (dtype == "float32" && covers(at::kFloat));
}

// For each prompt s, rows [ranges[s][0], ranges[s][1]) of q, k, v and out: out = causal
// softmax(q k^T * scale) v over that prompt's rows alone. q [N, Hq, D], k, v [N, Hkv, D], all
// of one dtype that `prefill_attention_covers`, with D contiguous (rows may be strided: views
// of a fused QKV output); out [N, Hq, D] contiguous (rows outside every range untouched). One
// call for a batch's prompts: per group of prompts (kGroupBytes), one pool wake-up for its
// packing and one for its work items, handed out together, longest first (per-prompt calls
// cost ~0.1 ms each beyond their arithmetic at 128-token prompts, 32 prompts x 30 layers).
void prefill_attention_ranges(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              at::Tensor& out, const at::Tensor& ranges, double scale,
                              int64_t num_threads) {
  const at::ScalarType dtype = q.scalar_type();
  TORCH_CHECK(covers(dtype), "prefill_attention: this build has no kernel for ", dtype);
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&q, &k, &v, &out}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == dtype && t->dim() == 3 &&
                    t->stride(2) == 1,
                "prefill_attention: CPU [T, H, D] tensors of one dtype with D contiguous");
  }
  const int64_t tokens = q.size(0), heads = q.size(1), dim = q.size(2), kv_heads = k.size(1);
  TORCH_CHECK(dim % 32 == 0 && dim <= 256, "head dim must be a multiple of 32, <= 256");
  TORCH_CHECK(k.size(0) == tokens && v.size(0) == tokens && v.size(1) == kv_heads &&
                  k.size(2) == dim && v.size(2) == dim && heads % kv_heads == 0,
              "prefill_attention: shapes of q, k, v do not match");
  TORCH_CHECK(out.is_contiguous() && out.sizes() == q.sizes(), "out: [T, Hq, D] contiguous");
  TORCH_CHECK(ranges.device().is_cpu() && ranges.scalar_type() == at::kLong &&
                  ranges.dim() == 2 && ranges.size(1) == 2 && ranges.is_contiguous(),
              "ranges: [S, 2] int64 (first row, end row) per prompt");
  const int64_t* r = ranges.data_ptr<int64_t>();
  for (int64_t p = 0; p < ranges.size(0); ++p)
    TORCH_CHECK(r[2 * p] >= 0 && r[2 * p + 1] >= r[2 * p] && r[2 * p + 1] <= tokens,
                "ranges: rows outside q");
#if defined(NEO_PREFILL_F32)
  const float s = static_cast<float>(scale);
  if (dtype == at::kFloat) {
    attend_ranges<float>(q, k, v, out, ranges, s, num_threads);
    return;
  }
#if defined(NEO_NATIVE_BF16)
  attend_ranges<bf16>(q, k, v, out, ranges, s, num_threads);
#endif
#endif
}

// out [T, Hq, D] (contiguous) = causal softmax(q k^T * scale) v of one prompt: the ranges
// kernel over all of q's rows.
void prefill_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       at::Tensor& out, double scale, int64_t num_threads) {
  const at::Tensor all = at::tensor({int64_t{0}, q.size(0)}, at::kLong).view({1, 2});
  prefill_attention_ranges(q, k, v, out, all, scale, num_threads);
}
