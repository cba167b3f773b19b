// The Python module of mlx-sd's CPU kernels (mlx_sd.cpu_kernels compiles every file of csrc/ into it).

#include <nanobind/nanobind.h>

#include "cpu_kernel_support.h"

namespace nb = nanobind;

NB_MODULE(_mlx_sd_cpu_kernels, m) {
  m.def("fused_attention", &mlx_sd::fused_attention, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("scale"),
        nb::arg("threads") = 1, "softmax(q k^T * scale) v for float32 (pairs, tokens, dim) arrays on mlx's CPU stream");
  m.def("group_norm", &mlx_sd::group_norm, nb::arg("x"), nb::arg("weight"), nb::arg("bias"), nb::arg("groups"), nb::arg("eps"),
        nb::arg("silu") = false,
        "GroupNorm of float32 (batch, rows, channels) x with its affine, then SiLU if asked, on mlx's CPU stream");
}
