// Fused elementwise ops of a Llama layer on a CPU device, bf16 and fp32: RMSNorm, the rotary
// embedding and SiLU(gate) * up, each one pass over its rows.
//
// Why: in torch each of them is 3 to 8 ops (a float copy, a square, a mean, an rsqrt, products,
// a cast back, ...), each a dispatch, an allocation and a pass over memory. At a 64-request
// decode batch of SmolLM2 one RMSNorm costs ~50 us that way (~14 us fused), and ~10 ms at a
// 4,096-token prefill chunk (~0.4 ms fused). vLLM's CPU backend fuses these too.
//
// bf16: the rounding is torch's, step by step: every intermediate tensor torch would round to
// bf16 is rounded here too (at::BFloat16 rounds to nearest even, as torch does), so the rotary
// embedding equals torch's bit for bit, and RMSNorm up to the order of the sum of squares
// (fp32 either way; tests/engine/test_fused_ops.py compares both). SiLU(gate) * up is fused
// on CPUs with AVX512-BF16, with a vectorised e^x (avx512_math.h; a scalar expf per element
// made an earlier version 4x slower than torch's ops): torch's two roundings (SiLU's output,
// then the product), its exp replaced by avx512_math.h's (within ~2 fp32 ulps), so an element
// differs from torch's by one bf16 step only where that moves it across a rounding boundary.
//
// fp32: the same expressions in fp32, loops the compiler vectorises for the machine's own
// instruction set (AVX2 or AVX-512), e^x through avx512_math.h's exp512 / exp256 (a scalar
// expf per element made SiLU * up 2.3x slower than torch's ops at a decode batch). Under -ffast-math a product and a sum may fuse into one FMA and a sum of
// squares runs in another order, so an element may differ from torch's ops by a few fp32 ulps
// (the tests bound it); the GEMMs around them differ from torch's by far more.
//
// Rows are split over torch's own thread pool (at::parallel_for), not a second OpenMP runtime,
// and small inputs run on the calling thread.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "avx512_math.h"

namespace {

using bf16 = at::BFloat16;
constexpr int64_t kElementsPerTask = 16384;  // below this many elements a task is not worth it

inline float f(bf16 v) { return static_cast<float>(v); }

int64_t grain(int64_t columns) { return std::max<int64_t>(1, kElementsPerTask / columns); }

// Every tensor of a call on the CPU, in x's dtype, which is bf16 or fp32.
void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype, name, ": a CPU tensor in x's dtype");
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kFloat, name, ": bf16 or fp32 only");
}

#if defined(NEO_NATIVE_BF16)
using neo::widen_bf16;
inline __m512 widen16(const bf16* p) { return neo::load_bf16x16(p); }
// The lanes of `m` only (a row's tail); the others read as zero.
inline __m512 widen16(const bf16* p, __mmask16 m) {
  return widen_bf16(_mm256_maskz_loadu_epi16(m, p));
}
// 16 fp32 -> 16 bf16 bits, rounded to nearest even as at::BFloat16 rounds.
inline __m256i narrow16(__m512 v) {
  const __m256bh b = _mm512_cvtneps_pbh(v);
  __m256i raw;
  std::memcpy(&raw, &b, sizeof(raw));
  return raw;
}
// fp32 -> bf16 -> fp32: the rounding torch applies to each intermediate bf16 tensor.
inline __m512 round16(__m512 v) { return widen_bf16(narrow16(v)); }
inline void store16(bf16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow16(v));
}
#endif

}  // namespace

// out[t] = w * bf16(x[t] * rsqrt(mean(x[t]^2) + eps)), x [T, H] contiguous.
// fp32: out[t] = w * (x[t] * rsqrt(mean(x[t]^2) + eps)).
static void rms_norm_fp32(const at::Tensor& x, const at::Tensor& weight, at::Tensor& out, float eps) {
  const int64_t rows = x.size(0), cols = x.size(1);
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* xr = xp + t * cols;
      float* o = op + t * cols;
      float squares = 0.f;
      for (int64_t i = 0; i < cols; ++i) squares += xr[i] * xr[i];
      const float scale = 1.f / std::sqrt(squares / static_cast<float>(cols) + eps);
      for (int64_t i = 0; i < cols; ++i) o[i] = wp[i] * (xr[i] * scale);
    }
  });
}

void fused_rms_norm(const at::Tensor& x, const at::Tensor& weight, at::Tensor& out, double eps) {
  check_dtype(x, x.scalar_type(), "x");
  check_dtype(weight, x.scalar_type(), "weight");
  check_dtype(out, x.scalar_type(), "out");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && out.is_contiguous(), "x: [T, H] contiguous");
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == x.size(1), "weight: [H] contiguous");
  if (x.scalar_type() == at::kFloat) return rms_norm_fp32(x, weight, out, static_cast<float>(eps));
  const int64_t rows = x.size(0), cols = x.size(1);
  const bf16* xp = x.data_ptr<bf16>();
  const bf16* wp = weight.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  const float epsf = static_cast<float>(eps);
  at::parallel_for(0, rows, grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const bf16* xr = xp + t * cols;
      bf16* o = op + t * cols;
      float squares = 0.f;
      int64_t i = 0;
#if defined(NEO_NATIVE_BF16)
      __m512 sq = _mm512_setzero_ps();
      for (; i + 16 <= cols; i += 16) {
        const __m512 v = widen16(xr + i);
        sq = _mm512_fmadd_ps(v, v, sq);
      }
      squares = _mm512_reduce_add_ps(sq);
#endif
      for (; i < cols; ++i) squares += f(xr[i]) * f(xr[i]);
      const float scale = 1.f / std::sqrt(squares / static_cast<float>(cols) + epsf);
      i = 0;
#if defined(NEO_NATIVE_BF16)
      const __m512 sv = _mm512_set1_ps(scale);
      for (; i + 16 <= cols; i += 16)
        store16(o + i, _mm512_mul_ps(widen16(wp + i), round16(_mm512_mul_ps(widen16(xr + i), sv))));
#endif
      for (; i < cols; ++i) o[i] = bf16(f(wp[i]) * f(bf16(f(xr[i]) * scale)));
    }
  });
}

// Rotate-half rotary embedding: out = bf16(bf16(x * cos) + bf16(rotate_half(x) * sin)), x
// [T, H, D] with any row stride (a view of the fused q/k/v projection), cos/sin [T, D].
// fp32: out = x * cos + rotate_half(x) * sin, each product rounded as torch rounds it (no FMA:
// where the two terms cancel, a fused one would differ from torch's by far more than an ulp
// of the result).
__attribute__((optimize("fp-contract=off"))) static void rotate_head_fp32(
    const float* x, const float* c, const float* s, float* o, int64_t half) {
  for (int64_t i = 0; i < half; ++i) o[i] = x[i] * c[i] - x[i + half] * s[i];
  for (int64_t i = half; i < 2 * half; ++i) o[i] = x[i] * c[i] + x[i - half] * s[i];
}

static void rotary_fp32(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                 at::Tensor& out) {
  const int64_t rows = x.size(0), heads = x.size(1), dim = x.size(2), half = dim / 2;
  const int64_t row_stride = x.stride(0);
  const float* xp = x.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, grain(heads * dim), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* c = cp + t * dim;
      const float* s = sp + t * dim;
      for (int64_t h = 0; h < heads; ++h) {
        rotate_head_fp32(xp + t * row_stride + h * dim, c, s, op + (t * heads + h) * dim, half);
      }
    }
  });
}

void fused_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                  at::Tensor& out) {
  check_dtype(x, x.scalar_type(), "x");
  check_dtype(cos, x.scalar_type(), "cos");
  check_dtype(sin, x.scalar_type(), "sin");
  check_dtype(out, x.scalar_type(), "out");
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1 && x.stride(1) == x.size(2),
              "x: [T, H, D] with contiguous heads");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && out.is_contiguous(),
              "cos, sin, out: contiguous");
  TORCH_CHECK(cos.numel() == x.size(0) * x.size(2) && sin.numel() == cos.numel() &&
                  out.numel() == x.numel() && x.size(2) % 2 == 0,
              "cos, sin: [T, D]; out: [T, H, D]; D even");
  if (x.scalar_type() == at::kFloat) return rotary_fp32(x, cos, sin, out);
  const int64_t rows = x.size(0), heads = x.size(1), dim = x.size(2), half = dim / 2;
  const int64_t row_stride = x.stride(0);
  const bf16* xp = x.data_ptr<bf16>();
  const bf16* cp = cos.data_ptr<bf16>();
  const bf16* sp = sin.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  at::parallel_for(0, rows, grain(heads * dim), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const bf16* c = cp + t * dim;
      const bf16* s = sp + t * dim;
      for (int64_t h = 0; h < heads; ++h) {
        const bf16* xr = xp + t * row_stride + h * dim;
        bf16* o = op + (t * heads + h) * dim;
#if defined(NEO_NATIVE_BF16)
        if (half % 16 == 0) {  // the same roundings, 16 lanes at a time
          for (int64_t i = 0; i < half; i += 16) {
            const __m512 lo = widen16(xr + i), hi = widen16(xr + half + i);
            const __m512 lo_cos = round16(_mm512_mul_ps(lo, widen16(c + i)));
            const __m512 hi_sin = round16(_mm512_mul_ps(hi, widen16(s + i)));  // negated below
            store16(o + i, _mm512_sub_ps(lo_cos, hi_sin));
            const __m512 hi_cos = round16(_mm512_mul_ps(hi, widen16(c + half + i)));
            const __m512 lo_sin = round16(_mm512_mul_ps(lo, widen16(s + half + i)));
            store16(o + half + i, _mm512_add_ps(hi_cos, lo_sin));
          }
          continue;
        }
#endif
        for (int64_t i = 0; i < dim; ++i) {
          const float rotated = i < half ? -f(xr[i + half]) : f(xr[i - half]);
          o[i] = bf16(f(bf16(f(xr[i]) * f(c[i]))) + f(bf16(rotated * f(s[i]))));
        }
      }
    }
  });
}

// out[t] = bf16(bf16(silu(gate[t])) * up[t]) with gate_up [T, 2I] = [gate | up], out [T, I].
// fp32: out[t] = silu(gate[t]) * up[t], silu(g) = g / (1 + e^-g).
static void silu_mul_fp32(const at::Tensor& gate_up, at::Tensor& out) {
  const int64_t rows = gate_up.size(0), cols = gate_up.size(1) / 2;
  const int64_t row_stride = gate_up.stride(0);
  const float* gp = gate_up.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* g = gp + t * row_stride;
      const float* u = g + cols;
      float* o = op + t * cols;
      int64_t i = 0;
#if defined(__AVX512F__)
      const __m512 one = _mm512_set1_ps(1.f);
      for (; i < cols; i += 16) {
        const __mmask16 m = cols - i >= 16 ? 0xFFFF : (__mmask16)((1u << (cols - i)) - 1);
        const __m512 x = _mm512_maskz_loadu_ps(m, g + i);
        const __m512 e = neo::exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
        const __m512 silu = _mm512_div_ps(x, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(o + i, m, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(m, u + i)));
      }
#elif defined(__AVX2__) && defined(__FMA__)
      const __m256 one = _mm256_set1_ps(1.f);
      for (; i + 8 <= cols; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = neo::exp256(_mm256_sub_ps(_mm256_setzero_ps(), x));
        const __m256 silu = _mm256_div_ps(x, _mm256_add_ps(one, e));
        _mm256_storeu_ps(o + i, _mm256_mul_ps(silu, _mm256_loadu_ps(u + i)));
      }
#endif
      for (; i < cols; ++i) o[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
    }
  });
}

void fused_silu_mul(const at::Tensor& gate_up, at::Tensor& out) {
  check_dtype(gate_up, gate_up.scalar_type(), "gate_up");
  check_dtype(out, gate_up.scalar_type(), "out");
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.stride(1) == 1 && gate_up.size(1) % 2 == 0,
              "gate_up: [T, 2I] with contiguous rows");
  const int64_t rows = gate_up.size(0), cols = gate_up.size(1) / 2;
  TORCH_CHECK(out.is_contiguous() && out.size(0) == rows && out.size(1) == cols, "out: [T, I]");
  if (gate_up.scalar_type() == at::kFloat) return silu_mul_fp32(gate_up, out);
#if defined(NEO_NATIVE_BF16)
  const int64_t row_stride = gate_up.stride(0);
  const bf16* gp = gate_up.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  const __m512 one = _mm512_set1_ps(1.f);
  at::parallel_for(0, rows, grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const bf16* g = gp + t * row_stride;
      const bf16* u = g + cols;
      bf16* o = op + t * cols;
      for (int64_t i = 0; i < cols; i += 16) {
        const __mmask16 m = cols - i >= 16 ? 0xFFFF : (__mmask16)((1u << (cols - i)) - 1);
        const __m512 x = widen16(g + i, m);
        const __m512 silu = _mm512_div_ps(x, _mm512_add_ps(one, neo::exp512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
        _mm256_mask_storeu_epi16(o + i, m, narrow16(_mm512_mul_ps(round16(silu), widen16(u + i, m))));
      }
    }
  });
#else
  TORCH_CHECK(false, "fused_silu_mul: this build has no AVX512-BF16");
#endif
}
