"""Building blocks shared by the CLIP, UNet and VAE models.

Activations are channels-last (NHWC); weights are in MLX layout (conv `[out, kH, kW, in]`,
linear `[out, in]`). Parameter names follow diffusers / transformers so that our weight files use the
names users already know.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .device import policy

LOG2E = 1.4426950408889634
# Adding and subtracting 1.5 * 2**23 rounds a float32 of magnitude below 2**22 to an integer.
_ROUND = 12582912.0
# 2**f on [-1/2, 1/2]: degree-5 polynomial, a relative-error least-squares fit on Chebyshev nodes,
# reweighted towards minimax (2.6e-7 relative error evaluated in float32; mx.exp's is 1.8e-6).
_EXP2 = (
    1.0000000717034576, 0.693146968461803, 0.24022119565453876,
    0.055507109837855645, 0.009675547701276307, 0.001327721345430341,
)
# erf(z) = z * P(z^2) / Q(z^2), fitted on |z| <= 4 the same way as a rational function: 3.5e-7
# absolute error evaluated in float32. Past the clamp the fit exceeds 1 by a few ulps and is clipped,
# so that erf is exactly +-1 there, as erf(4.1) in float32.
_ERF_CLAMP = 4.1
_ERF_P = (
    1.1283789612912074, 0.19674525783102972, 0.05353346941395241,
    0.004025020206581092, 0.0002885405762386682, 1.971282014928688e-06,
)
_ERF_Q = (
    1.0, 0.5076919527638516, 0.11668195103124154,
    0.015487187566666658, 0.0012215774107294866, 3.74701343824127e-05,
)


# ---------------------------------------------------------------------------------------------
# Element-wise functions, per device
#
# mlx's CPU backend evaluates exp, erf and sigmoid with scalar libm calls (about 11 ns an element on
# x86), while multiply, add, compare and shift are plain loops that mx.compile fuses into JIT-compiled
# kernels the C++ compiler vectorises. The "polynomial" formulations use only those (about 1.5 ns an
# element) and are as accurate in float32 as mlx's own; other dtypes and the GPU use mlx's ops.


def _estrin5(c: tuple[float, ...], x: mx.array) -> mx.array:
    """c[0] + c[1] x + ... + c[5] x^5 in Estrin's form: shallow enough to fuse into one kernel."""
    x2 = x * x
    return (c[0] + c[1] * x) + x2 * ((c[2] + c[3] * x) + x2 * (c[4] + c[5] * x))


def _exp2(t: mx.array) -> mx.array:
    """2**t in float32: a polynomial for the fraction times 2**whole built in the exponent bits.

    Below -126 it returns the smallest normal number (2**-126) rather than 0; from 128 on, +inf.
    """
    t = mx.clip(t, -126.0, 128.0)
    whole = (t + _ROUND) - _ROUND
    bits = mx.left_shift(whole.astype(mx.int32) + 127, 23)
    return _estrin5(_EXP2, t - whole) * mx.view(bits, mx.float32)


def _erf(z: mx.array) -> mx.array:
    z = mx.clip(z, -_ERF_CLAMP, _ERF_CLAMP)
    u = z * z
    return mx.clip(z * _estrin5(_ERF_P, u) / _estrin5(_ERF_Q, u), -1.0, 1.0)


def _silu(x: mx.array) -> mx.array:
    return x / (1 + _exp2(x * -LOG2E))


def _gelu(x: mx.array) -> mx.array:
    return 0.5 * x * (1 + _erf(x * 0.7071067811865476))


# exp2(scores - row max) of base-2 scores; the difference is never positive
_softmax_numerator = mx.compile(lambda s, peak: _exp2(mx.maximum(s - peak, -126.0)))
_silu_poly = mx.compile(_silu)
_quick_gelu_poly = mx.compile(lambda x: x / (1 + _exp2(x * (-1.702 * LOG2E))))
_gelu_poly = mx.compile(_gelu)
_geglu_poly = mx.compile(lambda value, gate: value * _gelu(gate))


def _polynomial(x: mx.array) -> bool:
    return x.dtype == mx.float32 and policy().elementwise == "polynomial"


def silu(x: mx.array) -> mx.array:
    return _silu_poly(x) if _polynomial(x) else nn.silu(x)


def quick_gelu(x: mx.array) -> mx.array:
    """OpenAI CLIP's x * sigmoid(1.702 x)."""
    return _quick_gelu_poly(x) if _polynomial(x) else x * mx.sigmoid(1.702 * x)


def gelu(x: mx.array) -> mx.array:
    """Exact (erf) GELU."""
    return _gelu_poly(x) if _polynomial(x) else nn.gelu(x)


def geglu(value: mx.array, gate: mx.array) -> mx.array:
    """value * gelu(gate), fused on the CPU."""
    return _geglu_poly(value, gate) if _polynomial(value) else value * nn.gelu(gate)


class GroupNorm(nn.Module):
    """GroupNorm over the channel axis of NHWC input with PyTorch's channel grouping.

    Groups are contiguous channel ranges (as in NCHW PyTorch); statistics are computed in float32.
    `silu=True` applies SiLU to the result, as every resnet does next: on the CPU (float32) the
    normalisation, affine and SiLU are one fused pass after the two statistics passes.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"{num_channels} channels cannot be split into {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.weight = mx.ones((num_channels,))
        self.bias = mx.zeros((num_channels,))

    def __call__(self, x: mx.array, silu: bool = False) -> mx.array:
        shape = x.shape
        channels = shape[-1]
        grouped = x.reshape(shape[0], -1, self.num_groups, channels // self.num_groups).astype(mx.float32)
        mean = grouped.mean(axis=(1, 3), keepdims=True)
        if _polynomial(x):
            var = _squared_deviation(grouped, mean).mean(axis=(1, 3), keepdims=True)
            scale = mx.rsqrt(var + self.eps) * self.weight.reshape(grouped.shape[2:])
            bias = self.bias.reshape(grouped.shape[2:])
            fused = _group_affine_silu if silu else _group_affine
            return fused(grouped, mean, scale, bias).reshape(shape)
        var = grouped.var(axis=(1, 3), keepdims=True)
        normed = ((grouped - mean) * mx.rsqrt(var + self.eps)).reshape(shape).astype(x.dtype)
        out = normed * self.weight + self.bias
        return nn.silu(out) if silu else out


def _normalize(x: mx.array, mean: mx.array, scale: mx.array, bias: mx.array) -> mx.array:
    return (x - mean) * scale + bias


_squared_deviation = mx.compile(lambda x, mean: mx.square(x - mean))
_group_affine = mx.compile(_normalize)
_group_affine_silu = mx.compile(lambda x, mean, scale, bias: _silu(_normalize(x, mean, scale, bias)))


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and layout) with the CPU's matmul formulations.

    mlx's CPU convolution copies the zero-padded input, then gathers every 3x3 patch into a buffer
    nine times the input's size before one GEMM (1.4 GB for a 128-channel 512x512 VAE layer). On the
    CPU (float32) a 1x1 convolution is a plain matmul, and a 3x3 stride-1 convolution on a wide
    enough image is nine matmuls of shifted row ranges of the padded, flattened input, accumulated
    in the GEMM itself: no patch buffer, and as fast or faster. Narrow images keep mx.conv2d, whose
    single larger GEMM wins there.
    """

    def __call__(self, x: mx.array) -> mx.array:
        if x.dtype == mx.float32 and policy().conv == "matmul":
            kernel = self.weight.shape[1]
            plain = _pair(self.stride) == (1, 1) and _pair(self.dilation) == (1, 1) and self.groups == 1
            if plain and kernel == 1 and _pair(self.padding) == (0, 0):
                return _conv1x1(x, self.weight, self.get("bias"))
            if plain and kernel == 3 and _pair(self.padding) == (1, 1) and x.shape[2] >= SHIFTED_CONV_MIN_WIDTH:
                return _conv3x3_shifted(x, self.weight, self.get("bias"))
        return super().__call__(x)


SHIFTED_CONV_MIN_WIDTH = 64  # below this the extra two columns per row and nine small GEMMs lose


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _conv1x1(x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    w = weight.reshape(weight.shape[0], -1).T
    flat = x.reshape(-1, x.shape[-1])
    out = mx.addmm(bias, flat, w) if bias is not None else flat @ w
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _conv3x3_shifted(x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    """3x3, stride 1, padding 1 as nine accumulated matmuls over the flattened padded image.

    With the image padded to width W+2 and flattened to rows, output position p (in padded-width
    coordinates) reads input row p + i*(W+2) + j for tap (i, j): each tap is one matmul of a
    contiguous row range. Two junk columns per row are computed and dropped.
    """
    batch, height, width, channels = x.shape
    padded_width = width + 2
    # one zero row above, two below: the last taps of the last row reach one row past the image
    flat = mx.pad(x, [(0, 0), (1, 2), (1, 1), (0, 0)]).reshape(batch, -1, channels)
    taps = mx.contiguous(weight.transpose(1, 2, 3, 0))  # (3, 3, in, out): each tap a row-major GEMM operand
    rows = height * padded_width
    out = bias
    for i in range(3):
        for j in range(3):
            offset = i * padded_width + j
            window = flat[:, offset : offset + rows]
            out = window @ taps[i, j] if out is None else mx.addmm(out, window, taps[i, j])
    return out.reshape(batch, height, padded_width, -1)[:, :, :width]


def split_heads(x: mx.array, heads: int) -> mx.array:
    """(B, N, C) -> (B, heads, N, C/heads)."""
    batch, tokens, channels = x.shape
    return x.reshape(batch, tokens, heads, channels // heads).transpose(0, 2, 1, 3)


def merge_heads(x: mx.array) -> mx.array:
    """(B, heads, N, d) -> (B, N, heads*d)."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, tokens, heads * dim)


def causal_mask(tokens: int, dtype: mx.Dtype = mx.float32) -> mx.array:
    """Additive mask with -inf above the diagonal (CLIP text towers)."""
    idx = mx.arange(tokens)
    return mx.where(idx[None, :] > idx[:, None], mx.array(-mx.inf, dtype=dtype), mx.array(0, dtype=dtype))


def attention(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    heads: int,
    mask: mx.array | None = None,
    upcast: bool = False,
    impl: str | None = None,
) -> mx.array:
    """Multi-head scaled dot-product attention on projected (B, N, C) tensors.

    `impl` picks the formulation ("fused", "matmul" or "chunked"); None uses the current device's
    choice from `device.policy`. `upcast` computes scores and softmax in float32 (SD2.1-768 in half
    precision); "chunked" always does.
    """
    choice = policy()
    impl = impl or choice.attention
    q, k, v = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    scale = q.shape[-1] ** -0.5
    if impl == "fused":
        dtype = q.dtype
        if upcast:
            q, k, v = q.astype(mx.float32), k.astype(mx.float32), v.astype(mx.float32)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        return merge_heads(out.astype(dtype))
    if impl == "chunked":
        return merge_heads(_chunked_attention(q, k, v, mask, choice.attention_chunk_bytes))
    if impl != "matmul":
        raise ValueError(f"unknown attention implementation {impl!r}")
    dtype = q.dtype
    if upcast:
        q, k = q.astype(mx.float32), k.astype(mx.float32)
    scores = (q * scale) @ k.swapaxes(-1, -2)
    if mask is not None:
        scores = scores + mask
    weights = mx.softmax(scores, axis=-1, precise=True).astype(dtype)
    return merge_heads(weights @ v)


def _chunked_attention(
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
    q = mx.contiguous(q.astype(mx.float32) * (dim**-0.5 * LOG2E)).reshape(pairs, queries, dim)
    k_t = mx.contiguous(k.astype(mx.float32).swapaxes(-1, -2)).reshape(pairs, dim, keys)
    ones = mx.ones((batch, heads, keys, 1), mx.float32)
    v = mx.concatenate([v.astype(mx.float32), ones], axis=-1).reshape(pairs, keys, dim + 1)
    if mask is not None:
        mask = mx.broadcast_to(mask.astype(mx.float32) * LOG2E, (batch, heads, queries, keys))
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
            weighted = _softmax_numerator(scores, scores.max(axis=-1, keepdims=True)) @ v[heads_slice]
            chunks.append(weighted[..., :dim] / weighted[..., dim:])
        blocks.append(mx.concatenate(chunks, axis=1) if len(chunks) > 1 else chunks[0])
    out = mx.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
    return out.reshape(batch, heads, queries, dim).astype(dtype)
