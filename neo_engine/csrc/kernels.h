// The host kernels' C++ entry points, shared by the Python bindings and by the fused decode
// layers (decode_layers.cpp), which call them without going through Python.
#pragma once

#include <torch/extension.h>

#include <string>

bool native_bf16();
bool built_with_avx2();
void decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                      torch::Tensor block_tables, torch::Tensor context_lens, torch::Tensor out,
                      double scale, int64_t num_threads);
void skinny_linear(const at::Tensor& x, const at::Tensor& weight, at::Tensor& out,
                   int64_t num_threads, bool native);
void write_kv(torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor blocks,
              torch::Tensor offsets, torch::Tensor k, torch::Tensor v);
void fused_rms_norm(const at::Tensor& x, const at::Tensor& weight, at::Tensor& out, double eps);
bool prefill_attention_covers(const std::string& dtype);
void prefill_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       at::Tensor& out, double scale, int64_t num_threads);
void prefill_attention_ranges(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              at::Tensor& out, const at::Tensor& ranges, double scale,
                              int64_t num_threads);
bool amx_prefill_available();
void amx_prefill_attention_ranges(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  at::Tensor& out, const at::Tensor& ranges, double scale,
                                  int64_t num_threads);
void fused_silu_mul(const at::Tensor& gate_up, at::Tensor& out);
void fused_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                  at::Tensor& out);
void first_index_of_max(const at::Tensor& logits, const at::Tensor& maxes, at::Tensor& out);
void bind_decode_layers(pybind11::module_& m);  // decode_layers.cpp: class DecodeLayers
