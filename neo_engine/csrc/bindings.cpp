// Python bindings of the host kernels (one extension module, built by cpu_kernel.py).
// Both kernels release the GIL: the executor's two lanes call them from two threads.

#include <torch/extension.h>

bool built_with_avx2();
void decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                      torch::Tensor block_tables, torch::Tensor context_lens, torch::Tensor out,
                      double scale, int64_t num_threads);
void skinny_linear(const at::Tensor& x, const at::Tensor& weight, at::Tensor& out,
                   int64_t num_threads);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "paged decode attention on the CPU",
        py::call_guard<py::gil_scoped_release>());
  m.def("skinny_linear", &skinny_linear, "out = x @ weight^T for few rows of x, fp32",
        py::call_guard<py::gil_scoped_release>());
  m.def("built_with_avx2", &built_with_avx2);
}
