// Causal prefill attention of whole prompts in bf16 on AMX tiles: the AVX512-BF16 flash kernel
// (prefill_attention.cpp) on a CPU with AMX-BF16, where a tile multiply does 16 x 16 x 32 products
// in one instruction. Per KV head, K and V are packed once into the tiles' pair layout; per
// work item (a query head's 16 rows) the scores of 64 keys come from four 16 x 16 tiles, an
// online softmax in AVX-512 registers (one row of 16 scores per register) turns them into bf16
// probabilities (rounded as torch's flash kernel rounds them), and P V adds four 16-dim output
// chunks at a time; a row's output is rescaled in memory when its maximum grows. Heads of 64,
// 128, 192 or 256 dims (a multiple of 64: four output tiles per pass).
// At SmolLM2's 64-dim heads the softmax's vector work, not the tiles, bounds a work item, so
// its e^x is the short one (avx512_math.h's exp512_nonpositive: degree 5, no upper clamp) and
// the scale is folded into its argument (one FMA): 0.73x / 0.79x torch's SDPA time at 1,024 /
// 2,048 tokens where the degree-7 exp512 with a separate scaling took 0.83x / 0.89x (medians
// of three alternating runs of benchmarks.prefill_attention, AMX VM, ad hoc), the same largest
// error from float64.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__AMX_BF16__) && defined(__AMX_TILE__) && defined(__AVX512BF16__)
#define NEO_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "avx512_math.h"
#endif

namespace {

#ifdef NEO_AMX
// Every tile here is 16 rows of 64 bytes: 16 x 32 bf16 (A and B operands, B in pairs) or
// 16 x 16 fp32 (results). tmm0-3: results (four score tiles, then four output chunks), tmm6:
// A, tmm7: B.
struct TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

bool amx_permitted() {
  // Linux hands out AMX's tile state only to processes that ask (arch_prctl).
  static const bool granted = [] {
    constexpr long kRequestPermission = 0x1023, kTileData = 18;
    return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
  }();
  return granted;
}

void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

constexpr int64_t kTile = 512;  // bf16 elements in one 16 x 64-byte tile
constexpr int64_t kKeys = 64;   // keys per softmax step: 4 score tiles

// K of one KV head as the B operand of Q K^T, per 16 keys and 32 dims: row r holds, key by key,
// dims 2r and 2r + 1 (a 16 x 16 transpose of dim pairs). Keys past T are zeros.
void pack_keys(const uint16_t* k, int64_t stride, int64_t T, int64_t D, int64_t keys,
               uint16_t* out) {
  const int64_t chunks = D / 32;
  for (int64_t b = 0; b < keys / 16; ++b)
    for (int64_t c = 0; c < chunks; ++c) {
      auto* tile = reinterpret_cast<uint32_t*>(out + (b * chunks + c) * kTile);
      for (int n = 0; n < 16; ++n) {
        const int64_t key = b * 16 + n;
        if (key < T) {
          const auto* src = reinterpret_cast<const uint32_t*>(k + key * stride + c * 32);
          for (int r = 0; r < 16; ++r) tile[r * 16 + n] = src[r];
        } else {
          for (int r = 0; r < 16; ++r) tile[r * 16 + n] = 0;
        }
      }
    }
}

// V of one KV head as the B operand of P V, per 32 keys and 16 dims: row r holds, dim by dim,
// keys 2r and 2r + 1 (two rows interleaved). Keys past T are zeros.
void pack_values(const uint16_t* v, int64_t stride, int64_t T, int64_t D, int64_t keys,
                 uint16_t* out) {
  const int64_t chunks = D / 16;
  auto row = [&](int64_t key, int64_t c) {  // 16 dims of one key, zeros past T
    return key < T ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + key * stride + c * 16))
                   : _mm256_setzero_si256();
  };
  for (int64_t b = 0; b < keys / 32; ++b)
    for (int64_t c = 0; c < chunks; ++c) {
      uint16_t* tile = out + (b * chunks + c) * kTile;
      for (int r = 0; r < 16; ++r) {
        const int64_t key = b * 32 + 2 * r;
        const __m512i first = _mm512_cvtepu16_epi32(row(key, c));
        const __m512i second = _mm512_slli_epi32(_mm512_cvtepu16_epi32(row(key + 1, c)), 16);
        const __m512i pairs = _mm512_or_si512(first, second);
        _mm512_storeu_si512(tile + r * 32, pairs);
      }
    }
}

// tmm0-3 += A x B_j for j = 0..3: A (into tmm6) 16 rows of 64 bytes from a, rows a_stride bytes
// apart; B_j (into tmm7) a packed tile at b + j * b_step.
inline void accumulate_four(const uint16_t* a, int64_t a_stride, const uint16_t* b,
                            int64_t b_step) {
  _tile_loadd(6, a, a_stride);
  _tile_loadd(7, b, 64);
  _tile_dpbf16ps(0, 6, 7);
  _tile_loadd(7, b + b_step, 64);
  _tile_dpbf16ps(1, 6, 7);
  _tile_loadd(7, b + 2 * b_step, 64);
  _tile_dpbf16ps(2, 6, 7);
  _tile_loadd(7, b + 3 * b_step, 64);
  _tile_dpbf16ps(3, 6, 7);
}

inline void zero_four() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

inline void combine(float* acc, const float* part, const float* alpha) {
  for (int r = 0; r < 16; ++r) {
    float* a = acc + r * 256;
    _mm512_storeu_ps(a, _mm512_fmadd_ps(_mm512_loadu_ps(a), _mm512_set1_ps(alpha[r]),
                                        _mm512_loadu_ps(part + r * 16)));
  }
}

// 16 query rows (from i0) of query head h against keys 0..i0 + 15, 64 keys at a time, with
// an online softmax; D a multiple of 64.
void attend_rows(const uint16_t* q, int64_t q_stride, int64_t T, int64_t D, int64_t h, int64_t i0,
                 const uint16_t* kp, const uint16_t* vp, float scale, uint16_t* out,
                 int64_t out_stride) {
  alignas(64) uint16_t padded_q[16 * 256];
  alignas(64) float scores[16 * kKeys];
  alignas(64) uint16_t probs[16 * kKeys];
  alignas(64) float part[4][16 * 16];
  alignas(64) float acc[16 * 256];
  float m[16], l[16], alpha[16];
  const int64_t rows = std::min<int64_t>(16, T - i0);
  const uint16_t* qa = q + i0 * q_stride + h * D;
  int64_t qa_bytes = q_stride * 2;
  if (rows < 16) {
    std::memset(padded_q, 0, sizeof(padded_q));
    for (int64_t r = 0; r < rows; ++r) std::memcpy(padded_q + r * D, qa + r * q_stride, D * 2);
    qa = padded_q;
    qa_bytes = D * 2;
  }
  for (int r = 0; r < 16; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
    std::memset(acc + r * 256, 0, D * sizeof(float));
  }
  const int64_t chunks = D / 32, vchunks = D / 16;
  const int64_t key_blocks = (i0 + rows - 1) / kKeys + 1;
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512 scale_v = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(-INFINITY);
  for (int64_t kb = 0; kb < key_blocks; ++kb) {
    zero_four();
    const uint16_t* kt = kp + 4 * kb * chunks * kTile;
    for (int64_t c = 0; c < chunks; ++c) {
      accumulate_four(qa + c * 32, qa_bytes, kt + c * kTile, chunks * kTile);
    }
    _tile_stored(0, scores, kKeys * 4);
    _tile_stored(1, scores + 16, kKeys * 4);
    _tile_stored(2, scores + 32, kKeys * 4);
    _tile_stored(3, scores + 48, kKeys * 4);
    const bool whole = kb * kKeys + kKeys - 1 <= i0;  // every row sees every key of the block
    for (int r = 0; r < 16; ++r) {
      __m512 x[4];
      for (int j = 0; j < 4; ++j) x[j] = _mm512_load_ps(scores + r * kKeys + 16 * j);
      __mmask16 visible[4] = {0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF};
      const int64_t limit = i0 + r - kb * kKeys;  // keys 0..limit of this block are visible
      if (!whole) {
        const int64_t last = std::max<int64_t>(-1, std::min<int64_t>(limit, kKeys));
        const __m512i lim = _mm512_set1_epi32(static_cast<int>(last));
        for (int j = 0; j < 4; ++j) {
          const __m512i key = _mm512_add_epi32(lane, _mm512_set1_epi32(16 * j));
          visible[j] = _mm512_cmple_epi32_mask(key, lim);
          x[j] = _mm512_mask_mov_ps(ninf, visible[j], x[j]);
        }
      }
      alpha[r] = 1.f;
      __m512 p[4];
      if (limit < 0) {
        for (int j = 0; j < 4; ++j) p[j] = _mm512_setzero_ps();
      } else {
        // The max of the raw scores (scale > 0), kept scaled: e^(x scale - m) in one FMA.
        const float mx = scale * _mm512_reduce_max_ps(
            _mm512_max_ps(_mm512_max_ps(x[0], x[1]), _mm512_max_ps(x[2], x[3])));
        if (mx > m[r]) {
          alpha[r] = std::exp(m[r] - mx);
          m[r] = mx;
        }
        const __m512 mm = _mm512_set1_ps(m[r]);
        for (int j = 0; j < 4; ++j) {
          p[j] = _mm512_maskz_mov_ps(visible[j],
                                     neo::exp512_nonpositive(_mm512_fmsub_ps(x[j], scale_v, mm)));
        }
      }
      const __m512bh p01 = _mm512_cvtne2ps_pbh(p[1], p[0]), p23 = _mm512_cvtne2ps_pbh(p[3], p[2]);
      auto* row_probs = reinterpret_cast<__m512i*>(probs + r * kKeys);
      _mm512_store_si512(row_probs, reinterpret_cast<const __m512i&>(p01));
      _mm512_store_si512(row_probs + 1, reinterpret_cast<const __m512i&>(p23));
      const __m512 sum = _mm512_add_ps(_mm512_add_ps(p[0], p[1]), _mm512_add_ps(p[2], p[3]));
      l[r] = l[r] * alpha[r] + _mm512_reduce_add_ps(sum);
    }
    const uint16_t* v0 = vp + 2 * kb * vchunks * kTile;
    const uint16_t* v1 = v0 + vchunks * kTile;
    for (int64_t g = 0; g < vchunks; g += 4) {
      zero_four();
      accumulate_four(probs, kKeys * 2, v0 + g * kTile, kTile);  // keys 0..31 of the step
      accumulate_four(probs + 32, kKeys * 2, v1 + g * kTile, kTile);  // keys 32..63
      _tile_stored(0, part[0], 64);
      _tile_stored(1, part[1], 64);
      _tile_stored(2, part[2], 64);
      _tile_stored(3, part[3], 64);
      for (int j = 0; j < 4; ++j) combine(acc + (g + j) * 16, part[j], alpha);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const __m512 inv = _mm512_set1_ps(1.f / l[r]);
    uint16_t* o = out + (i0 + r) * out_stride + h * D;
    for (int64_t d = 0; d < D; d += 16) {
      const __m256bh y = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(acc + r * 256 + d), inv));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + d), reinterpret_cast<const __m256i&>(y));
    }
  }
}
#endif

}  // namespace

bool amx_prefill_available() {
#ifdef NEO_AMX
  return amx_permitted();
#else
  return false;
#endif
}

// For each prompt s, rows [ranges[s][0], ranges[s][1]) of q [N, Hq, D], k, v [N, Hkv, D] (bf16,
// head dims contiguous, rows may be strided) and out [N, Hq, D] (bf16, contiguous): out =
// causal softmax(q k^T * scale) v over that prompt's rows alone. One pool wake-up packs every
// prompt's K and V, one more runs every work item, longest first.
void amx_prefill_attention_ranges(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  at::Tensor& out, const at::Tensor& ranges, double scale,
                                  int64_t num_threads) {
  TORCH_CHECK(amx_prefill_available(), "amx_prefill_attention: no AMX-BF16 in this build or CPU");
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&q, &k, &v, &out}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kBFloat16 && t->dim() == 3 &&
                    t->stride(2) == 1,
                "amx_prefill_attention: CPU bf16 [T, H, D] tensors with D contiguous");
  }
  const int64_t heads = q.size(1), dim = q.size(2), kv_heads = k.size(1);
  TORCH_CHECK(dim % 64 == 0 && dim <= 256, "amx_prefill_attention: head dim 64, 128, 192 or 256");
  TORCH_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0) && v.size(1) == kv_heads &&
                  k.size(2) == dim && v.size(2) == dim,
              "amx_prefill_attention: q, k, v of the same rows and head dim, k and v alike");
  TORCH_CHECK(heads % kv_heads == 0 && out.is_contiguous() && out.sizes() == q.sizes(),
              "amx_prefill_attention: out like q, query heads a multiple of KV heads");
  const auto rows = ranges.to(at::kLong).contiguous();
  const int64_t prompts = rows.size(0);
  const int64_t* row = rows.data_ptr<int64_t>();
#ifdef NEO_AMX
  auto keys_of = [&](int64_t s) {  // a prompt's keys, padded to whole softmax steps
    return (row[2 * s + 1] - row[2 * s] + kKeys - 1) / kKeys * kKeys;
  };
  std::vector<int64_t> offset(prompts + 1, 0);  // each prompt's packed K/V, per KV head
  for (int64_t s = 0; s < prompts; ++s) {
    TORCH_CHECK(0 <= row[2 * s] && row[2 * s] <= row[2 * s + 1] && row[2 * s + 1] <= q.size(0),
                "amx_prefill_attention: ranges within q's rows");
    offset[s + 1] = offset[s] + 2 * kv_heads * keys_of(s) * dim;
  }
  std::unique_ptr<uint16_t[]> packed(new uint16_t[std::max<int64_t>(1, offset[prompts])]);
  const auto* qd = reinterpret_cast<const uint16_t*>(q.data_ptr<at::BFloat16>());
  const auto* kd = reinterpret_cast<const uint16_t*>(k.data_ptr<at::BFloat16>());
  const auto* vd = reinterpret_cast<const uint16_t*>(v.data_ptr<at::BFloat16>());
  auto* od = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  at::parallel_for(0, prompts * kv_heads * 2, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t s = i / (2 * kv_heads), g = (i / 2) % kv_heads, first = row[2 * s];
      const int64_t T = row[2 * s + 1] - first, keys = keys_of(s);
      uint16_t* dst = packed.get() + offset[s] + (2 * g + i % 2) * keys * dim;
      if (i % 2 == 0) {
        pack_keys(kd + first * k.stride(0) + g * dim, k.stride(0), T, dim, keys, dst);
      } else {
        pack_values(vd + first * v.stride(0) + g * dim, v.stride(0), T, dim, keys, dst);
      }
    }
  });
  struct Item {
    int64_t prompt, head, first_row;
  };
  std::vector<Item> items;
  for (int64_t s = 0; s < prompts; ++s)
    for (int64_t i0 = 0; i0 < row[2 * s + 1] - row[2 * s]; i0 += 16)
      for (int64_t h = 0; h < heads; ++h) items.push_back({s, h, i0});
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& a, const Item& b) { return a.first_row > b.first_row; });
  const int64_t group = heads / kv_heads, total = static_cast<int64_t>(items.size());
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::max<int64_t>(1, num_threads), 1, [&](int64_t, int64_t) {
    configure_tiles();
    for (int64_t t; (t = next.fetch_add(1)) < total;) {
      const Item& it = items[t];
      const int64_t first = row[2 * it.prompt], keys = keys_of(it.prompt), g = it.head / group;
      const uint16_t* kp = packed.get() + offset[it.prompt] + 2 * g * keys * dim;
      attend_rows(qd + first * q.stride(0), q.stride(0), row[2 * it.prompt + 1] - first, dim,
                  it.head, it.first_row, kp, kp + keys * dim, static_cast<float>(scale),
                  od + first * heads * dim, heads * dim);
    }
    _tile_release();
  });
#endif
}
