"""8-bit and 4-bit weight quantization of the models' Linear layers, for less memory.

`quantize(model, bits)` replaces, in place, every Linear layer whose input width is a multiple of the
group size by a QuantizedLinear (mlx's affine quantization: per group of 64 input weights a float
scale and offset). Convolutions, norms and embeddings stay as they are. Quantize after loading the
weights: the layers quantize the values they hold.

How a quantized layer multiplies is per device: the GPU runs mlx's
fused quantized matmul; mlx's CPU quantized matmul is a scalar dot-product loop (far below BLAS),
so on the CPU each layer expands its weight to float32 just for its BLAS matmul: the weights stay
small in memory and the speed stays near float32's.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map_with_path

from .device import current_device

BITS = (4, 8)
GROUP_SIZE = 64


class QuantizedLinear(nn.QuantizedLinear):
    """nn.QuantizedLinear with the CPU's dequantize-then-GEMM formulation."""

    def __call__(self, x: mx.array) -> mx.array:
        if x.dtype != mx.float32 or current_device() != "cpu":
            return super().__call__(x)
        weight = mx.dequantize(
            self["weight"], self["scales"], self.get("biases"), self.group_size, self.bits, mode=self.mode,
            dtype=mx.float32,
        )
        bias = self.get("bias")
        return x @ weight.T if bias is None else mx.addmm(bias, x, weight.T)


def quantize(model: nn.Module, bits: int = 8, group_size: int = GROUP_SIZE) -> int:
    """Quantize `model`'s Linear layers in place; returns how many were quantized.

    Layers whose input width is not a multiple of `group_size` keep their float weights.
    """
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}; received {bits!r}")
    count = 0

    def swap(_path: str, module: nn.Module) -> nn.Module:
        nonlocal count
        if isinstance(module, nn.Linear) and module.weight.shape[1] % group_size == 0:
            count += 1
            return QuantizedLinear.from_linear(module, group_size, bits)
        return module

    model.update_modules(tree_map_with_path(swap, model.leaf_modules(), is_leaf=nn.Module.is_module))
    mx.eval(model.parameters())  # quantize now, so that the float weights are freed
    return count
