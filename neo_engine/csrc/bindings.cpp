// Python bindings of the host kernels (one extension module, built by cpu_kernel.py).
// Every kernel releases the GIL: the executor's two lanes call them from two threads.

#include <torch/extension.h>

#include "avx512_math.h"  // NEO_NATIVE_BF16
#include "kernels.h"

// Whether this build's bf16 kernels (skinny GEMM, host attention scores, prefill attention,
// fused SiLU * up) run on native bf16 dot products (AVX512-BF16).
bool native_bf16() {
#if defined(NEO_NATIVE_BF16)
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "paged decode attention on the CPU",
        py::call_guard<py::gil_scoped_release>());
  m.def("skinny_linear", &skinny_linear, "out = x @ weight^T for few rows of x, fp32 or bf16",
        py::arg("x"), py::arg("weight"), py::arg("out"), py::arg("num_threads"),
        py::arg("native") = true, py::call_guard<py::gil_scoped_release>());
  m.def("native_bf16", &native_bf16,
        "whether bf16 runs on native bf16 dot products (AVX512-BF16) in this build");
  m.def("built_with_avx2", &built_with_avx2);
  m.def("write_kv", &write_kv, "store new k, v at paged slots of one layer",
        py::call_guard<py::gil_scoped_release>());
  m.def("fused_rms_norm", &fused_rms_norm, "bf16 RMSNorm in one pass",
        py::call_guard<py::gil_scoped_release>());
  m.def("fused_rotary", &fused_rotary, "bf16 rotate-half rotary embedding in one pass",
        py::call_guard<py::gil_scoped_release>());
  m.def("prefill_attention_covers", &prefill_attention_covers,
        "whether this build has the prefill attention kernel for a dtype ('bfloat16', 'float32')");
  m.def("prefill_attention", &prefill_attention,
        "causal prefill attention of one prompt (bf16 native dot products, or fp32 AVX-512)",
        py::call_guard<py::gil_scoped_release>());
  m.def("prefill_attention_ranges", &prefill_attention_ranges,
        "causal prefill attention of several prompts (row ranges of q, k, v) in one call",
        py::call_guard<py::gil_scoped_release>());
  m.def("amx_prefill_available", &amx_prefill_available,
        "whether this build and CPU run the bf16 prefill attention on AMX tiles");
  m.def("amx_prefill_attention_ranges", &amx_prefill_attention_ranges,
        "bf16 causal prefill attention of several prompts (row ranges) on AMX tiles",
        py::call_guard<py::gil_scoped_release>());
  m.def("fused_silu_mul", &fused_silu_mul, "bf16 SiLU(gate) * up in one pass",
        py::call_guard<py::gil_scoped_release>());
  m.def("first_index_of_max", &first_index_of_max,
        "per row of float32 logits, the first index of its (given) maximum: greedy tokens",
        py::call_guard<py::gil_scoped_release>());
  bind_decode_layers(m);
}
