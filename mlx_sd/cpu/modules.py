"""CPU equivalents of the models' modules, each computing what the module it replaces computes.

Each subclasses the plain module (same parameters) and holds the pipeline's CpuOptions; in float32
it runs mlx-sd's formulations for mlx's CPU backend, in any other dtype the plain module's own.
`mlx_sd.cpu.accelerate` builds them from the plain modules of a loaded model.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..layers import DotProductAttention, GroupNorm, GroupNormSiLU, Upsample2D, merge_heads, split_heads
from ..unet import GEGLU, UNet2DConditionModel
from . import convolution, elementwise, kernels
from ..device import worker_streams
from .options import CpuOptions, product


class CpuLinear(nn.Linear):
    """By the compiled GEMM (mlx_sd.cpu.options.product)."""

    options: CpuOptions

    def __call__(self, x: mx.array) -> mx.array:
        return product(self.options, x, self.weight.T, self.get("bias"))


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class CpuConv2d(nn.Conv2d):
    """1x1, "same" 3x3 and stride-2 3x3 convolutions as matrix products (mlx_sd.cpu.convolution)."""

    options: CpuOptions

    def __call__(self, x: mx.array) -> mx.array:
        if x.dtype == mx.float32 and _pair(self.dilation) == (1, 1) and self.groups == 1:
            kernel, bias, stride, padding = self.weight.shape[1], self.get("bias"), _pair(self.stride), _pair(self.padding)
            height, width, channels = x.shape[1:]
            even = height % 2 == 0 and width % 2 == 0
            if stride == (1, 1) and kernel == 1 and padding == (0, 0):
                return convolution.conv1x1(self.options, x, self.weight, bias)
            if stride == (1, 1) and kernel == 3 and padding == (1, 1):
                if even and convolution.winograd_wins(self.options, height * width, channels, self.weight.shape[0]):
                    return convolution.conv3x3_winograd(self.options, x, self.weight, bias)
                if width >= convolution.shifted_min_width(self.options):
                    return convolution.conv3x3_shifted(self.options, x, self.weight, bias)
            if stride == (2, 2) and kernel == 3 and padding == (1, 1) and even and self.options.kernels:
                return convolution.conv3x3_stride2(self.options, x, self.weight, bias)
        return super().__call__(x)


class CpuUpsample2D(Upsample2D):
    """Without the upsampled image where nothing is cropped and the image is large enough
    (convolution.upsample_conv3x3); a crop changes what the zero padding borders, so a cropped one
    runs as the plain module, as does a small image."""

    options: CpuOptions

    def __call__(self, x: mx.array, size: tuple[int, int] | None = None) -> mx.array:
        whole = size is None or tuple(size) == (2 * x.shape[1], 2 * x.shape[2])
        large = x.shape[1] * x.shape[2] >= convolution.UPSAMPLE_PHASES_MIN_PIXELS
        if x.dtype == mx.float32 and whole and large and self.conv.weight.shape[1:3] == (3, 3):
            return convolution.upsample_conv3x3(self.options, x, self.conv.weight, self.conv.get("bias"))
        return super().__call__(x, size)


def _group_norm(norm: GroupNorm, x: mx.array, silu: bool) -> mx.array:
    """The compiled kernel's two passes, or the vectorised mlx formulation (elementwise.group_norm)."""
    shape = x.shape
    flat = x.reshape(shape[0], -1, shape[-1])
    run = kernels.group_norm if norm.options.kernels else elementwise.group_norm
    return run(flat, norm.weight, norm.bias, norm.num_groups, norm.eps, silu).reshape(shape)


class CpuGroupNorm(GroupNorm):
    options: CpuOptions

    def __call__(self, x: mx.array) -> mx.array:
        return _group_norm(self, x, silu=False) if x.dtype == mx.float32 else super().__call__(x)


class CpuGroupNormSiLU(GroupNormSiLU):
    """Normalisation, affine and SiLU in one pass after the statistics."""

    options: CpuOptions

    def __call__(self, x: mx.array) -> mx.array:
        return _group_norm(self, x, silu=True) if x.dtype == mx.float32 else super().__call__(x)


class CpuAttention(DotProductAttention):
    """In float32 whatever the inputs' dtype: the compiled kernel (one cache-blocked pass, no score
    matrix in memory), or with a mask or without the kernels, exact attention in blocks
    (chunked_attention)."""

    options: CpuOptions

    def __call__(self, q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None = None) -> mx.array:
        q, k, v = (split_heads(a, self.heads) for a in (q, k, v))
        if self.options.kernels and mask is None:
            return merge_heads(_kernel_attention(q, k, v, self.options.kernel_threads()))
        return merge_heads(chunked_attention(q, k, v, mask, self.options.attention_chunk_bytes))


def _kernel_attention(q: mx.array, k: mx.array, v: mx.array, threads: int) -> mx.array:
    batch, heads, queries, dim = q.shape

    def pairs(x: mx.array) -> mx.array:  # the kernel casts to float32 itself
        return x.reshape(batch * heads, x.shape[2], dim)

    out = kernels.fused_attention(pairs(q), pairs(k), pairs(v), dim**-0.5, threads)
    return out.reshape(batch, heads, queries, dim).astype(q.dtype)


def chunked_attention(
    q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None, chunk_bytes: int
) -> mx.array:
    """Exact attention on (B, heads, N, d) in blocks of heads and queries of about `chunk_bytes` of scores.

    The CPU formulation, in float32: scores in base 2 (log2(e) folded into the query scale) for the
    polynomial exp2; the softmax normalised after the product with v, whose extra column of ones
    yields the row sums of the weights in the same product (no separate pass over them). Bounded
    memory: SD1.5's 64x64 self-attention would hold 1 GiB of scores at once.
    """
    dtype = q.dtype
    batch, heads, queries, dim = q.shape
    keys = k.shape[2]
    pairs = batch * heads
    q = mx.contiguous(q.astype(mx.float32) * (dim**-0.5 * elementwise.LOG2E)).reshape(pairs, queries, dim)
    k_t = mx.contiguous(k.astype(mx.float32).swapaxes(-1, -2)).reshape(pairs, dim, keys)
    ones = mx.ones((batch, heads, keys, 1), mx.float32)
    v = mx.concatenate([v.astype(mx.float32), ones], axis=-1).reshape(pairs, keys, dim + 1)
    if mask is not None:
        mask = mx.broadcast_to(mask.astype(mx.float32) * elementwise.LOG2E, (batch, heads, queries, keys))
        mask = mask.reshape(pairs, queries, keys)
    rows = min(queries, max(1, chunk_bytes // (4 * keys)))
    group = max(1, chunk_bytes // (4 * keys * rows))
    blocks = []
    for first in range(0, pairs, group):
        heads_slice = slice(first, first + group)
        chunks = []
        for start in range(0, queries, rows):
            scores = q[heads_slice, start : start + rows] @ k_t[heads_slice]
            if mask is not None:
                scores = scores + mask[heads_slice, start : start + rows]
            weighted = elementwise.softmax_numerator(scores, scores.max(axis=-1, keepdims=True)) @ v[heads_slice]
            chunks.append(weighted[..., :dim] / weighted[..., dim:])
        blocks.append(mx.concatenate(chunks, axis=1) if len(chunks) > 1 else chunks[0])
    out = mx.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
    return out.reshape(batch, heads, queries, dim).astype(dtype)


class CpuLayerNorm(nn.LayerNorm):
    """Each row normalised on every core by the compiled kernel (mlx's CPU LayerNorm is a reduction
    and element-wise passes, each on one thread)."""

    options: CpuOptions

    def __call__(self, x: mx.array) -> mx.array:
        if x.dtype == mx.float32 and self.options.kernels and "weight" in self and "bias" in self:
            rows = x.reshape(-1, x.shape[-1])
            return kernels.layer_norm(rows, self.weight, self.bias, self.eps, self.options.kernel_threads()).reshape(x.shape)
        return super().__call__(x)


class CpuGEGLU(GEGLU):
    """value * gelu(gate) in one pass: the compiled kernel on every core, or mlx's (elementwise.geglu)."""

    options: CpuOptions

    def __call__(self, x: mx.array) -> mx.array:
        projected = self.proj(x)
        if projected.dtype == mx.float32 and self.options.kernels:
            return elementwise.geglu_on_threads(projected, self.options.kernel_threads())
        value, gate = mx.split(projected, 2, axis=-1)
        return elementwise.geglu(value, gate) if value.dtype == mx.float32 else value * nn.gelu(gate)


def split_batch_over_streams(fn, streams: tuple[mx.Stream, ...], *batched: mx.array | None) -> mx.array:
    """fn(*batched) with the batch (every array's first axis) cut into one part per stream, each part
    computed on its stream, concatenated. None arguments pass through."""
    rows = next(a.shape[0] for a in batched if a is not None)
    parts = min(len(streams), rows)
    if parts < 2:
        return fn(*batched)
    bounds = [round(i * rows / parts) for i in range(parts + 1)]
    outputs = []
    for stream, start, stop in zip(streams, bounds, bounds[1:]):
        with mx.stream(stream):
            outputs.append(fn(*(None if a is None else a[start:stop] for a in batched)))
    return mx.concatenate(outputs, axis=0)


class StreamSplitUNet(UNet2DConditionModel):
    """Without the compiled kernels: a batch of two or more rows (CFG's negative and positive) is split
    over the worker streams. mlx runs each CPU stream's element-wise work on a thread of its own, so
    every core shares it, and each part's activations are a fraction of the whole batch's. The
    compiled kernels use every core themselves: with them the batch runs whole."""

    options: CpuOptions

    def __call__(
        self,
        sample: mx.array,
        timestep: mx.array,
        encoder_hidden_states: mx.array,
        text_embeds: mx.array | None = None,
        time_ids: mx.array | None = None,
    ) -> mx.array:
        timestep = self._check_inputs(sample, timestep, encoder_hidden_states, text_embeds, time_ids)
        whole = super().__call__
        return split_batch_over_streams(
            whole, worker_streams("cpu"), sample, timestep, encoder_hidden_states, text_embeds, time_ids
        )
