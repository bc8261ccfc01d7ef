// What the vector kernels share: whether this build has native bf16 dot products
// (NEO_NATIVE_BF16: AVX-512 with AVX512-BF16 and AVX512-BW; one build fact, which every kernel
// and `native_bf16()` in bindings.cpp read), bf16 -> fp32 widening, and e^x on 16 fp32 lanes
// (AVX-512) and on 8 (AVX2 with FMA).
#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace neo {

// e^x for 8 fp32 lanes (AVX2): Cephes' expf, the same Cody-Waite reduction as exp512 below and
// a degree-5 minimax polynomial (relative error ~1e-7). Inputs clamped to [-87.3, 88.7].
inline __m256 exp256(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  x = _mm256_min_ps(x, _mm256_set1_ps(88.7f));
  const __m256 fx = _mm256_floor_ps(
      _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 v = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  v = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), v);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(v, v), _mm256_add_ps(v, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

}  // namespace neo
#endif

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

// e^x for fp32 lanes: e^x = 2^n e^r with n = round(x log2 e) and r = x - n ln 2 in
// [-0.35, 0.35], r computed in two steps (ln 2 split into a high part exact to 16 bits and the
// rest: Cody and Waite's reduction, so r keeps its accuracy at large |x|, where reducing
// x log2 e rounded lost up to 6 ulps at |x| ~ 16); e^r by its Taylor polynomial to degree 7
// (truncation < 6e-9 relative), scaled by 2^n. Within ~2 fp32 ulps of the exact value.
// exp512_taylor is that with the polynomial's degree as a parameter, for x already clamped.
template <int Degree>
inline __m512 exp512_taylor(__m512 x) {
  static constexpr float kInverseFactorial[8] = {1.f,        1.f,         1.f / 2.f,
                                                 1.f / 6.f,  1.f / 24.f,  1.f / 120.f,
                                                 1.f / 720.f, 1.f / 5040.f};
  static_assert(Degree >= 1 && Degree <= 7, "exp512_taylor: degree 1 to 7");
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln 2's top bits
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);     // and the rest
  __m512 p = _mm512_set1_ps(kInverseFactorial[Degree]);
  for (int k = Degree - 1; k >= 0; --k) {
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kInverseFactorial[k]));
  }
  return _mm512_scalef_ps(p, n);
}

// Inputs are clamped to [-87.3, 88.7]: below, ~1e-38 (callers mask what must be exactly zero);
// above, ~3e38.
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  return exp512_taylor<7>(_mm512_min_ps(x, _mm512_set1_ps(88.7f)));
}

// e^x for x <= 0 (a softmax's scores less their max), in fewer steps than exp512: no upper
// clamp, and e^r to degree 5 (truncation < 2.5e-6 relative at |r| <= 0.35), for probabilities
// that are then rounded to bf16 (2^-9 relative) before they multiply V. The lower clamp stays:
// it keeps r finite for -inf lanes (callers mask them).
inline __m512 exp512_nonpositive(__m512 x) {
  return exp512_taylor<5>(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)));
}

}  // namespace neo

#endif
