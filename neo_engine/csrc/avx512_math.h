// What the AVX-512 kernels share: whether this build has native bf16 dot products
// (NEO_NATIVE_BF16: AVX-512 with AVX512-BF16 and AVX512-BW; one build fact, which every kernel
// and `native_bf16()` in bindings.cpp read), bf16 -> fp32 widening and e^x on 16 fp32 lanes.
#pragma once

#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#define NEO_NATIVE_BF16 1
#endif

#if defined(__AVX512F__)
#include <immintrin.h>

namespace neo {

// 16 bf16 values (their bits) -> 16 fp32, exactly: a bf16 is the top half of an fp32.
inline __m512 widen_bf16(__m256i bits) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
// 16 consecutive bf16 values at p, widened to fp32.
inline __m512 load_bf16x16(const void* p) {
  return widen_bf16(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
}

// e^x for fp32 lanes: 2^(x log2 e) split into an integer n and a fraction f in [-0.5, 0.5];
// 2^f by its Taylor polynomial to degree 7 (relative error < 2e-8 there), scaled by 2^n.
// Inputs are clamped to [-87.3, 88.7]: below, ~1e-38 (callers mask what must be exactly zero);
// above, ~3e38.
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  x = _mm512_min_ps(x, _mm512_set1_ps(88.7f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.525273380405984e-05f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530393381606e-04f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618129107628477e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550410866482158e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402265069591007e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471805599453e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

}  // namespace neo

#endif
