"""LoRA merging on the CPU: each changed weight in one threaded pass of the compiled kernel.

The plain merge (mlx_sd.lora.merge.Merging) makes every changed weight in five passes over a float32
copy (widen, product, sum, add, narrow), most of them on one thread; csrc/lora_merge.cpp forms the
low-rank product tile by tile in registers, adds it to the widened base and narrows it as it stores,
on every core. Results equal the plain merge's but for the product's summation order (at most one float16 ulp).
"""

from __future__ import annotations

import mlx.core as mx

from ..lora.deltas import LayerDelta
from ..lora.merge import Merging
from . import kernels
from .options import CpuOptions

KERNEL_DTYPES = (mx.float16, mx.float32)


class CpuMerging(Merging):
    def __init__(self, options: CpuOptions):
        self.options = options

    def merged(self, base: mx.array, delta: LayerDelta) -> mx.array:
        if not self.options.kernels or base.dtype not in KERNEL_DTYPES:
            return super().merged(base, delta)
        rows = base.shape[0] if base.ndim > 1 else 1
        dense = None if delta.dense is None else delta.dense.reshape(rows, -1)
        out = kernels.lora_merge(base.reshape(rows, -1), dense, delta.up, delta.down, self.options.kernel_threads())
        return out.reshape(base.shape)


def merging_for(cpu: CpuOptions | None) -> Merging | None:
    """How a pipeline with these CPU options merges LoRAs (None: as mlx ops, on the GPU)."""
    return CpuMerging(cpu) if cpu is not None else None
