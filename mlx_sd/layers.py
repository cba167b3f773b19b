"""Building blocks shared by the CLIP, UNet and VAE models, in plain mlx.nn and mx.fast operations.

Activations are channels-last (NHWC); weights are in MLX layout (conv `[out, kH, kW, in]`,
linear `[out, in]`). Parameter names follow diffusers / transformers so that our weight files use the
names users already know. A device that needs other formulations swaps these modules for
equivalents after the model is built; nothing here asks which device runs it.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class GroupNorm(nn.Module):
    """GroupNorm over the channel axis of NHWC input with PyTorch's channel grouping.

    Groups are contiguous channel ranges (as in NCHW PyTorch); statistics are computed in float32
    whatever the input's dtype, as diffusers' half-precision models effectively do.
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
        grouped = x.reshape(shape[0], -1, self.num_groups, shape[-1] // self.num_groups).astype(mx.float32)
        mean = grouped.mean(axis=(1, 3), keepdims=True)
        var = grouped.var(axis=(1, 3), keepdims=True)
        normed = ((grouped - mean) * mx.rsqrt(var + self.eps)).reshape(shape).astype(x.dtype)
        return normed * self.weight + self.bias


class GroupNormSiLU(GroupNorm):
    """GroupNorm, then SiLU: what precedes every resnet convolution. One module (same parameters as
    GroupNorm) so that a device can run the pair as one pass."""

    def __call__(self, x: mx.array) -> mx.array:
        return nn.silu(super().__call__(x))


class DotProductAttention(nn.Module):
    """Multi-head scaled dot-product attention of projected (B, N, C) queries, keys and values.

    `upcast` computes it in float32 whatever the inputs' dtype (SD2.1-768 and the VAE, as diffusers'
    upcast_attention / upcast_softmax). No parameters: the projections belong to the caller.
    """

    def __init__(self, heads: int, upcast: bool = False):
        super().__init__()
        self.heads = heads
        self.upcast = upcast

    def __call__(self, q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None = None) -> mx.array:
        dtype = q.dtype
        q, k, v = (split_heads(a, self.heads) for a in (q, k, v))
        if self.upcast:
            q, k, v = q.astype(mx.float32), k.astype(mx.float32), v.astype(mx.float32)
            mask = None if mask is None else mask.astype(mx.float32)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5, mask=mask)
        return merge_heads(out.astype(dtype))


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x upsampling, cropped to `size` (default: twice the input's), then a 3x3
    convolution, as diffusers' F.interpolate then conv (UNet and VAE decoder)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def __call__(self, x: mx.array, size: tuple[int, int] | None = None) -> mx.array:
        batch, height, width, channels = x.shape
        up = mx.broadcast_to(x[:, :, None, :, None, :], (batch, height, 2, width, 2, channels))
        up = up.reshape(batch, 2 * height, 2 * width, channels)
        if size is not None:
            up = up[:, : size[0], : size[1]]
        return self.conv(up)


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
