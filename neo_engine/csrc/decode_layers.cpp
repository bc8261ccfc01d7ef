// Every layer of a decode-only iteration on a CPU device in one call from Python.
//
// Why: at decode sizes a layer is ~10 host kernels of 5-100 us each, and Python's glue around
// them (argument checks, views, dispatch, tensor allocation, the executor's bookkeeping) took
// ~95 us a layer: ~2.9 ms of a ~30 ms step of SmolLM2 at 32 requests on the AMX VM, with the
// kernels made no-ops (ad hoc, 2026-12-06), time in which the second core waits. Here the
// same kernels run in the same order on the same tensors, so the result is the Python path's
// bit for bit (tests/engine/test_decode_layers.py): RMSNorm, QKV projection (+ bias), rotary
// over q and k, the KV store, paged decode attention, O projection + residual, RMSNorm,
// gate/up projection, SiLU * up, down projection + residual. The GEMMs are `layers.linear`'s:
// the skinny kernel up to `skinny_rows` rows, else oneDNN's prepacked GEMM, reached through
// torch's dispatcher (mkldnn::_linear_pointwise, its .binary form for the residual adds), past
// `exact_rows` rows at `layers.blocked_rows`'s row counts (zero-padded), so that a decode batch
// of a new size finds the GEMMs the engine built before serving.
//
// neo_engine/decode_layers.py decides when this applies and builds the spans it times.

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/extension.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "kernels.h"

namespace {

// The layers' tensors as decode_layers.py passes them, in this order.
enum Slot : size_t {
  kInputNorm, kQkv, kQkvBlocked, kQkvBias, kO, kOBlocked,
  kPostNorm, kGateUp, kGateUpBlocked, kDown, kDownBlocked, kSlots
};

struct Gemm {
  at::Tensor plain;    // [out, in], for the skinny kernel
  at::Tensor blocked;  // oneDNN's prepacked layout of the same weight
};

struct Layer {
  at::Tensor input_norm, post_norm, qkv_bias;  // qkv_bias undefined where the model has none
  Gemm qkv, o, gate_up, down;
};

// `layers.blocked_rows`: `rows` up to `exact`, else rounded up to one of 16 steps per octave
// (the two must agree: the engine builds the GEMMs at Python's counts before serving).
int64_t blocked_rows(int64_t rows, int64_t exact) {
  if (rows <= exact) return rows;
  const int bit_length = 64 - __builtin_clzll(static_cast<uint64_t>(rows));
  const int64_t step = int64_t{1} << (bit_length - 5);
  return (rows + step - 1) / step * step;
}

// `t` [rows, n] with zero rows appended up to `padded` rows (itself where none are needed).
at::Tensor with_zero_rows(const at::Tensor& t, int64_t padded) {
  if (t.size(0) == padded) return t;
  at::Tensor out = at::zeros({padded, t.size(1)}, t.options());
  out.narrow(0, 0, t.size(0)).copy_(t);
  return out;
}

at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& blocked) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, c10::string_view,
                                         c10::List<std::optional<at::Scalar>>,
                                         std::optional<c10::string_view>)>();
  return op.call(x, blocked, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), "");
}

at::Tensor onednn_linear_add(const at::Tensor& x, const at::Tensor& residual,
                             const at::Tensor& blocked) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "binary")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, c10::string_view)>();
  return op.call(x, residual, blocked, std::nullopt, "add");
}

}  // namespace

class DecodeLayers {
 public:
  DecodeLayers(const std::vector<std::vector<at::Tensor>>& layers, int64_t heads,
               int64_t kv_heads, int64_t head_dim, double eps, double scale,
               int64_t skinny_rows, int64_t exact_rows)
      : heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), eps_(eps), scale_(scale),
        skinny_rows_(skinny_rows), exact_rows_(exact_rows) {
    for (const auto& t : layers) {
      TORCH_CHECK(t.size() == kSlots, "DecodeLayers: ", kSlots, " tensors per layer");
      Layer layer;
      layer.input_norm = t[kInputNorm];
      layer.post_norm = t[kPostNorm];
      if (t[kQkvBias].numel()) layer.qkv_bias = t[kQkvBias];
      layer.qkv = {t[kQkv], t[kQkvBlocked]};
      layer.o = {t[kO], t[kOBlocked]};
      layer.gate_up = {t[kGateUp], t[kGateUpBlocked]};
      layer.down = {t[kDown], t[kDownBlocked]};
      layers_.push_back(std::move(layer));
    }
  }

  // hidden [T, h] through every layer; k_caches/v_caches [layers, blocks, Hkv, block, D];
  // cos/sin [T, D]; blocks/offsets [T] int64 (where each new token's K/V goes); tables
  // [T, max_blocks] and lens [T] int32. Returns the last layer's output and each layer's
  // wall time in seconds.
  std::tuple<at::Tensor, std::vector<double>> run(at::Tensor hidden, const at::Tensor& cos,
                                                  const at::Tensor& sin,
                                                  const at::Tensor& k_caches,
                                                  const at::Tensor& v_caches,
                                                  const at::Tensor& blocks,
                                                  const at::Tensor& offsets,
                                                  const at::Tensor& tables,
                                                  const at::Tensor& lens) const {
    TORCH_CHECK(hidden.dim() == 2 && hidden.is_contiguous(), "hidden: [T, h] contiguous");
    TORCH_CHECK(k_caches.size(0) == static_cast<int64_t>(layers_.size()),
                "one KV cache per layer expected");
    std::vector<double> seconds;
    seconds.reserve(layers_.size());
    for (size_t l = 0; l < layers_.size(); ++l) {
      const auto start = std::chrono::steady_clock::now();
      hidden = layer(layers_[l], hidden, cos, sin, k_caches[l], v_caches[l], blocks, offsets,
                     tables, lens);
      seconds.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return {hidden, seconds};
  }

 private:
  at::Tensor linear(const at::Tensor& x, const Gemm& w) const {
    const int64_t rows = x.size(0);
    if (rows <= skinny_rows_) {
      at::Tensor out = at::empty({rows, w.plain.size(0)}, x.options());
      skinny_linear(x, w.plain, out, at::get_num_threads(), true);
      return out;
    }
    const int64_t padded = blocked_rows(rows, exact_rows_);
    return onednn_linear(with_zero_rows(x, padded), w.blocked).narrow(0, 0, rows);
  }

  at::Tensor linear_add(const at::Tensor& x, const Gemm& w, const at::Tensor& residual) const {
    const int64_t rows = x.size(0);
    if (rows <= skinny_rows_) return at::add(residual, linear(x, w));
    const int64_t padded = blocked_rows(rows, exact_rows_);
    return onednn_linear_add(with_zero_rows(x, padded), with_zero_rows(residual, padded),
                             w.blocked)
        .narrow(0, 0, rows);
  }

  // SiLU(gate) * up: the fused kernel, or torch's ops where it has no bf16 path (as
  // `layers.post_projection` falls back to `layers.torch_silu_mul`).
  static at::Tensor silu_mul(const at::Tensor& gate_up) {
    if (gate_up.scalar_type() == at::kBFloat16 && !native_bf16()) {
      const auto halves = gate_up.chunk(2, 1);
      return at::silu(halves[0]) * halves[1];
    }
    at::Tensor act = at::empty({gate_up.size(0), gate_up.size(1) / 2}, gate_up.options());
    fused_silu_mul(gate_up, act);
    return act;
  }

  at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight) const {
    at::Tensor out = at::empty_like(x);
    fused_rms_norm(x, weight, out, eps_);
    return out;
  }

  at::Tensor layer(const Layer& w, const at::Tensor& hidden, const at::Tensor& cos,
                   const at::Tensor& sin, const at::Tensor& k_cache, const at::Tensor& v_cache,
                   const at::Tensor& blocks, const at::Tensor& offsets,
                   const at::Tensor& tables, const at::Tensor& lens) const {
    const int64_t tokens = hidden.size(0);
    const int64_t q_size = heads_ * head_dim_, kv_size = kv_heads_ * head_dim_;
    at::Tensor qkv = linear(rms_norm(hidden, w.input_norm), w.qkv);
    if (w.qkv_bias.defined()) qkv = at::add(qkv, w.qkv_bias);
    // q's and k's heads side by side: one rotary pass over both, as layers.pre_projection
    const at::Tensor qk = qkv.narrow(1, 0, q_size + kv_size)
                              .view({tokens, heads_ + kv_heads_, head_dim_});
    at::Tensor rotated = at::empty(qk.sizes(), qk.options());
    fused_rotary(qk, cos, sin, rotated);
    const at::Tensor q = rotated.narrow(1, 0, heads_);
    const at::Tensor k = rotated.narrow(1, heads_, kv_heads_);
    const at::Tensor v = qkv.narrow(1, q_size + kv_size, kv_size)
                             .view({tokens, kv_heads_, head_dim_});
    write_kv(k_cache, v_cache, blocks, offsets, k, v);
    at::Tensor attn = at::empty({tokens, heads_, head_dim_}, hidden.options());
    decode_attention(q, k_cache, v_cache, tables, lens, attn, scale_, at::get_num_threads());
    const at::Tensor h = linear_add(attn.view({tokens, q_size}), w.o, hidden);
    const at::Tensor gate_up = linear(rms_norm(h, w.post_norm), w.gate_up);
    return linear_add(silu_mul(gate_up), w.down, h);
  }

  std::vector<Layer> layers_;
  int64_t heads_, kv_heads_, head_dim_;
  double eps_, scale_;
  int64_t skinny_rows_, exact_rows_;
};

void bind_decode_layers(pybind11::module_& m) {
  pybind11::class_<DecodeLayers>(m, "DecodeLayers")
      .def(pybind11::init<const std::vector<std::vector<at::Tensor>>&, int64_t, int64_t,
                          int64_t, double, double, int64_t, int64_t>(),
           pybind11::arg("layers"), pybind11::arg("heads"), pybind11::arg("kv_heads"),
           pybind11::arg("head_dim"), pybind11::arg("eps"), pybind11::arg("scale"),
           pybind11::arg("skinny_rows"), pybind11::arg("exact_rows"))
      .def("run", &DecodeLayers::run, "every layer of a decode-only batch; (hidden, seconds)",
           pybind11::call_guard<pybind11::gil_scoped_release>());
}
