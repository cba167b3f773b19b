"""Building blocks shared by the CLIP, UNet and VAE models.

Activations are channels-last (NHWC); weights are in MLX layout (conv `[out, kH, kW, in]`,
linear `[out, in]`). Parameter names follow diffusers / transformers so that our weight files use the
names users already know.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .device import policy


class GroupNorm(nn.Module):
    """GroupNorm over the channel axis of NHWC input with PyTorch's channel grouping.

    Groups are contiguous channel ranges (as in NCHW PyTorch); statistics are computed in float32.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"{num_channels} channels cannot be split into {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.weight = mx.ones((num_channels,))
        self.bias = mx.zeros((num_channels,))

    def __call__(self, x: mx.array) -> mx.array:
        shape = x.shape
        channels = shape[-1]
        grouped = x.reshape(shape[0], -1, self.num_groups, channels // self.num_groups).astype(mx.float32)
        mean = grouped.mean(axis=(1, 3), keepdims=True)
        var = grouped.var(axis=(1, 3), keepdims=True)
        normed = ((grouped - mean) * mx.rsqrt(var + self.eps)).reshape(shape).astype(x.dtype)
        return normed * self.weight + self.bias


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

    `impl` picks the formulation ("fused" or "matmul"); None uses the current device's choice from
    `device.policy`. `upcast` computes scores and softmax in float32 (SD2.1-768 in half precision).
    """
    impl = impl or policy().attention
    q, k, v = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    scale = q.shape[-1] ** -0.5
    if impl == "fused":
        dtype = q.dtype
        if upcast:
            q, k, v = q.astype(mx.float32), k.astype(mx.float32), v.astype(mx.float32)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        return merge_heads(out.astype(dtype))
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
