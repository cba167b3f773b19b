"""Rearranging pixels of NHWC images: nearest upsampling, pixel (un)shuffle in torch's channel order
(so that weights trained with torch's PixelShuffle/PixelUnshuffle work unchanged), reflect padding."""

from __future__ import annotations

import mlx.core as mx


def nearest_upsample(x: mx.array, factor: int) -> mx.array:
    """Each pixel repeated `factor` times along height and width."""
    n, h, w, c = x.shape
    x = mx.broadcast_to(x[:, :, None, :, None, :], (n, h, factor, w, factor, c))
    return x.reshape(n, h * factor, w * factor, c)


def pixel_shuffle(x: mx.array, factor: int) -> mx.array:
    """(N, H, W, C*f*f) -> (N, H*f, W*f, C); channel c*f*f + i*f + j goes to offset (i, j) of channel c."""
    n, h, w, cff = x.shape
    c = cff // (factor * factor)
    x = x.reshape(n, h, w, c, factor, factor).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(n, h * factor, w * factor, c)


def pixel_unshuffle(x: mx.array, factor: int) -> mx.array:
    """The inverse of pixel_shuffle: (N, H, W, C) -> (N, H/f, W/f, C*f*f)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // factor, factor, w // factor, factor, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(n, h // factor, w // factor, c * factor * factor)


def reflect_pad_to_multiple(x: mx.array, multiple: int) -> mx.array:
    """Pad the bottom and right edges, mirroring the image (without repeating the edge pixel), so that
    height and width are multiples of `multiple`."""
    pad_h = -x.shape[1] % multiple
    pad_w = -x.shape[2] % multiple
    if pad_h >= x.shape[1] or pad_w >= x.shape[2]:  # too small to mirror (a picture under 4 pixels wide)
        return mx.pad(x, [(0, 0), (0, pad_h), (0, pad_w), (0, 0)], mode="edge")
    if pad_h:
        x = mx.concatenate([x, x[:, -pad_h - 1 : -1][:, ::-1]], axis=1)
    if pad_w:
        x = mx.concatenate([x, x[:, :, -pad_w - 1 : -1][:, :, ::-1]], axis=2)
    return x
