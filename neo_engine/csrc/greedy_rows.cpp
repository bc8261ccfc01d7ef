// Greedy sampling of a decode batch: per row of logits, the first index of the row's maximum.
//
// Why: torch's argmax over a [64, 49152] float32 batch takes ~2.6 ms on 2 cores here, 20x
// its amax (0.13 ms): the index-tracking reduction is not vectorised. The sampler computes
// each row's max anyway (a row is usable only if its max is finite), so what is left is a
// search for the first element equal to it: one vectorised compare per 16 floats, stopping
// at the first hit. It is torch.argmax's answer (the first maximal value) on every row whose
// max is finite, and only such rows are greedy-sampled (an unusable row gets -1).

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

int64_t first_equal(const float* row, int64_t n, float target) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 t = _mm512_set1_ps(target);
  for (; i + 16 <= n; i += 16) {
    const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_loadu_ps(row + i), t, _CMP_EQ_OQ);
    if (hit) return i + __builtin_ctz(static_cast<unsigned>(hit));
  }
#endif
  for (; i < n; ++i) {
    if (row[i] == target) return i;
  }
  return -1;  // not reached when target is the row's max
}

}  // namespace

// out[b] = the first i with logits[b, i] == maxes[b], or -1 where maxes[b] is not finite.
// logits [B, V] float32 with contiguous rows; maxes [B] float32; out [B] int64.
void first_index_of_max(const at::Tensor& logits, const at::Tensor& maxes, at::Tensor& out) {
  TORCH_CHECK(logits.device().is_cpu() && logits.scalar_type() == at::kFloat &&
                  logits.dim() == 2 && logits.stride(1) == 1,
              "logits: [B, V] float32 on the CPU with contiguous rows");
  TORCH_CHECK(maxes.scalar_type() == at::kFloat && maxes.is_contiguous() &&
                  maxes.numel() == logits.size(0),
              "maxes: [B] float32");
  TORCH_CHECK(out.scalar_type() == at::kLong && out.is_contiguous() &&
                  out.numel() == logits.size(0),
              "out: [B] int64");
  const int64_t rows = logits.size(0), vocab = logits.size(1), stride = logits.stride(0);
  const float* lp = logits.data_ptr<float>();
  const float* mp = maxes.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      op[b] = std::isfinite(mp[b]) ? first_equal(lp + b * stride, vocab, mp[b]) : -1;
    }
  });
}
