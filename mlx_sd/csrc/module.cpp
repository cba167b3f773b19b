// The Python module of mlx-sd's CPU kernels (mlx_sd.cpu_kernels compiles every file of csrc/ into it).

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "cpu_kernel_support.h"

namespace nb = nanobind;

NB_MODULE(_mlx_sd_cpu_kernels, m) {
  m.def("fused_attention", &mlx_sd::fused_attention, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("scale"),
        nb::arg("threads") = 1, "softmax(q k^T * scale) v for float32 (pairs, tokens, dim) arrays on mlx's CPU stream");
  m.def("bf16_products", &mlx_sd::bf16_products, "whether gemm and conv_taps can multiply in bfloat16 (AVX512_BF16)");
  m.def("gemm", &mlx_sd::gemm, nb::arg("a"), nb::arg("b"), nb::arg("bias") = nb::none(), nb::arg("threads") = 1,
        nb::arg("bf16") = false,
        "bias + a @ b for a (batch, rows, in) and b (in, out), in float32 on mlx's CPU stream");
  m.def("conv_taps", &mlx_sd::conv_taps, nb::arg("x"), nb::arg("b"), nb::arg("bias") = nb::none(), nb::arg("taps"),
        nb::arg("threads") = 1, nb::arg("bf16") = false,
        "bias + sum over taps t = (dy, dx) of x shifted by (dy, dx) (zeros outside) @ b[t in:(t + 1) in] for x (batch, height, "
        "width, in), in float32 on mlx's CPU stream");
  nb::class_<mlx_sd::Mapping>(m, "Mapping");
  m.def("map_file", &mlx_sd::map_file, nb::arg("path"), "a private, copy-on-write mapping of the file, its pages mapped in");
  m.def(
      "mapped_array",
      [](const std::shared_ptr<mlx_sd::Mapping>& mapping, size_t offset, const std::vector<int>& shape, const std::string& dtype) {
        static const std::pair<const char*, mlx::core::Dtype> kDtypes[] = {
            {"float32", mlx::core::float32}, {"float16", mlx::core::float16}, {"bfloat16", mlx::core::bfloat16},
            {"uint32", mlx::core::uint32}, {"int32", mlx::core::int32}, {"uint8", mlx::core::uint8}};
        for (const auto& [name, value] : kDtypes)
          if (dtype == name) return mlx_sd::mapped_array(mapping, offset, shape, value);
        throw std::invalid_argument("mapped_array: unsupported dtype " + dtype);
      },
      nb::arg("mapping"), nb::arg("offset"), nb::arg("shape"), nb::arg("dtype"),
      "an array whose data is the mapping's bytes from offset on (no copy)");
  m.def("group_norm", &mlx_sd::group_norm, nb::arg("x"), nb::arg("weight"), nb::arg("bias"), nb::arg("groups"), nb::arg("eps"),
        nb::arg("silu") = false,
        "GroupNorm of float32 (batch, rows, channels) x with its affine, then SiLU if asked, on mlx's CPU stream");
  m.def("lora_merge", &mlx_sd::lora_merge, nb::arg("base"), nb::arg("delta") = nb::none(), nb::arg("up") = nb::none(),
        nb::arg("down") = nb::none(), nb::arg("threads") = 1,
        "(base in float32 + delta + up @ down) in base's dtype, for a float16 or float32 base (rows, cols), on mlx's CPU stream");
  m.def("geglu", &mlx_sd::geglu, nb::arg("x"), nb::arg("p"), nb::arg("q"), nb::arg("limit"), nb::arg("threads") = 1,
        "value * gelu(gate) of float32 x (rows, 2 x channels) split into value and gate, gelu(g) = relu(g) - p(|g|) / q(|g|) "
        "below limit, on mlx's CPU stream");
  m.def("layer_norm", &mlx_sd::layer_norm, nb::arg("x"), nb::arg("weight"), nb::arg("bias"), nb::arg("eps"),
        nb::arg("threads") = 1, "LayerNorm of each row of float32 x (rows, channels) with its affine, on mlx's CPU stream");
}
