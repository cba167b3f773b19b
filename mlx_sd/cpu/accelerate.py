"""The CPU path applied to a loaded model: its modules swapped for the CPU equivalents, once.

`accelerate(model, options)` is to mlx's CPU backend what `mlx.nn.quantize` is to memory: it walks
the module tree and replaces each module that has a CPU equivalent (mlx_sd.cpu.modules) by one
holding the same parameters. `weight_dtype` says in which dtype the CPU keeps a component's weights.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..clip import CLIPTextModel
from ..layers import DotProductAttention, GroupNorm, GroupNormSiLU, Upsample2D
from ..module_swap import M, as_class, replace_modules
from ..unet import GEGLU, UNet2DConditionModel
from .modules import (
    CpuAttention, CpuConv2d, CpuGEGLU, CpuGroupNorm, CpuGroupNormSiLU, CpuLayerNorm, CpuLinear, CpuUpsample2D,
    StreamSplitUNet,
)
from .options import CpuOptions


def _equivalents(options: CpuOptions) -> dict[type, type]:
    """Plain class -> CPU class. Linear layers and LayerNorm only with the compiled kernels (mlx's
    matmul is the system BLAS already; its LayerNorm is exact, only single-threaded); the UNet's batch
    split only without the kernels (StreamSplitUNet)."""
    equivalents = {
        nn.Conv2d: CpuConv2d, Upsample2D: CpuUpsample2D, GroupNorm: CpuGroupNorm, GroupNormSiLU: CpuGroupNormSiLU,
        DotProductAttention: CpuAttention, GEGLU: CpuGEGLU,
    }
    if options.kernels:
        equivalents[nn.Linear] = CpuLinear
        equivalents[nn.LayerNorm] = CpuLayerNorm
    else:
        equivalents[UNet2DConditionModel] = StreamSplitUNet
    return equivalents


def accelerate(model: M, options: CpuOptions) -> M:
    """`model` with its modules replaced by their CPU equivalents (exact class matches only: a
    module already replaced, or a QuantizedLinear, stays as it is). Returns the model, a new
    object when the root itself was replaced; the parameters are the same arrays."""
    equivalents = _equivalents(options)

    def replacement(module: nn.Module) -> nn.Module | None:
        cls = equivalents.get(type(module))
        return None if cls is None else as_class(module, cls, options=options)

    return replace_modules(model, replacement)


def weight_dtype(model: nn.Module, storage: mx.Dtype, compute: mx.Dtype, options: CpuOptions) -> mx.Dtype:
    """The dtype the CPU keeps `model`'s weights in, computing in `compute` (float32).

    The text encoders keep narrower stored weights and each op promotes them (they run once per
    prompt: a resident float32 copy costs more memory than its casts cost time). The UNet keeps them
    too where the compiled GEMM converts them as it packs them (a float32 copy would only cost memory
    and load time). The caller sets CLIPTextModel.compute_dtype.
    """
    narrower = storage.size < compute.size
    if narrower and (isinstance(model, CLIPTextModel) or (isinstance(model, UNet2DConditionModel) and options.kernels)):
        return storage
    return compute
