// Python bindings of the CUDA kernels (fba._C_cuda, or the JIT-built twin that fba.kernels loads).
#include <torch/extension.h>

#include <vector>

std::vector<torch::Tensor> cross_attention_forward(torch::Tensor q, torch::Tensor k_f, torch::Tensor v_f,
                                                   torch::Tensor k_b, torch::Tensor v_b, torch::Tensor valid_f,
                                                   torch::Tensor valid_b, int64_t row_start);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cross_attention_forward", &cross_attention_forward,
        "Image->text cross-attention of both branches with column stats: (o_f, o_b, stats [B,3,M], lse [2,B,H,Nq])",
        py::arg("q"), py::arg("k_f"), py::arg("v_f"), py::arg("k_b"), py::arg("v_b"), py::arg("valid_f"),
        py::arg("valid_b"), py::arg("row_start"));
}
