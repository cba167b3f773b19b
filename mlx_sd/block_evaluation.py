"""Evaluating a model block by block, with a cancel check between blocks, on every device.

Left lazy, mlx builds a whole UNet step or VAE decode as one graph and evaluates it at once: nothing
can stop it midway (one step of the demo model at 2048x2048 runs for minutes), and more activations
are alive at once (docs/performance.md). `evaluate_blocks` makes a model's resnets, transformer blocks and resamplers evaluate
their output as soon as it is computed, and large attentions do so per block of queries; after each
evaluation the `Boundary` polls its cancel callback and raises samplers.Cancelled when it says so.
The models themselves stay plain: the blocks are swapped for subclasses (mlx_sd.module_swap).
"""

from __future__ import annotations

import functools
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .layers import DotProductAttention, Upsample2D
from .module_swap import M, as_class, replace_modules
from .samplers import Cancelled
from .unet import BasicTransformerBlock, Downsample2D, ResnetBlock2D
from .vae import Downsample, MidAttention, ResnetBlock

BLOCKS = (ResnetBlock2D, BasicTransformerBlock, Downsample2D, ResnetBlock, MidAttention, Downsample, Upsample2D)
# Attention is split into blocks of queries only when its scores would exceed SPLIT_SCORE_BYTES (SD1.5
# at 1024, the demo model at 2048): below that one call takes well under a second, and whole calls keep
# the GPU's and the CPU kernel's work in one piece. A block then holds at most QUERY_BLOCK_SCORE_BYTES
# of scores: at 2048x2048 the demo model's 512x512 latents make 262144 keys, so 32 queries of its two heads.
SPLIT_SCORE_BYTES = 4 << 30
QUERY_BLOCK_SCORE_BYTES = 64 << 20


class Boundary:
    """Called with each block's output: evaluates it, then asks `cancel` (set per generation)."""

    def __init__(self) -> None:
        self.cancel: Callable[[], bool] | None = None

    def __call__(self, out: mx.array) -> mx.array:
        mx.eval(out)
        if self.cancel is not None and self.cancel():
            raise Cancelled("cancelled inside a step")
        return out


@functools.cache
def _evaluated(cls: type[nn.Module]) -> type[nn.Module]:
    def __call__(self, *args, **kwargs):
        return self.boundary(cls.__call__(self, *args, **kwargs))

    return type(cls.__name__, (cls,), {"__call__": __call__, "__doc__": f"{cls.__name__}, evaluated when called."})


@functools.cache
def _query_blocks(cls: type[DotProductAttention]) -> type[DotProductAttention]:
    def __call__(self, q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None = None) -> mx.array:
        queries, keys = q.shape[1], k.shape[1]
        per_query = 4 * q.shape[0] * self.heads * keys  # bytes of float32 scores
        rows = queries if queries * per_query <= SPLIT_SCORE_BYTES else max(1, QUERY_BLOCK_SCORE_BYTES // per_query)
        outputs = []
        for start in range(0, queries, rows):
            part = None if mask is None else mask[..., start : start + rows, :]
            outputs.append(self.boundary(cls.__call__(self, q[:, start : start + rows], k, v, part)))
        return outputs[0] if len(outputs) == 1 else mx.concatenate(outputs, axis=1)

    return type(cls.__name__, (cls,), {"__call__": __call__, "__doc__": f"{cls.__name__}, by blocks of queries."})


def evaluate_blocks(model: M, boundary: Boundary, blocks: tuple[type[nn.Module], ...] = BLOCKS) -> M:
    """`model` with its `blocks` (and attention by blocks of queries) evaluated as they are computed,
    each followed by `boundary`; apply after any device swap (mlx_sd.cpu.accelerate)."""

    def replacement(module: nn.Module) -> nn.Module | None:
        if hasattr(module, "boundary"):  # already evaluated block by block
            return None
        if isinstance(module, DotProductAttention):
            return as_class(module, _query_blocks(type(module)), boundary=boundary)
        if isinstance(module, blocks):
            return as_class(module, _evaluated(type(module)), boundary=boundary)
        return None

    return replace_modules(model, replacement)
