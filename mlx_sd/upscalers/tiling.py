"""Running an upscaler tile by tile, so that any image fits in memory.

Each tile is run with `overlap` pixels of its neighbours around it as context, and only the output of
the tile itself is kept. At the image's edges the context stops where the image does, as it does for
the whole image, so the result differs from the untiled one only by what the network would have seen
beyond `overlap` pixels: nothing for small networks, well under one 8-bit level for the ESRGAN family.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .device import for_device

# Pixels of the input per side. A 4x RRDBNet's peak memory is its last convolutions at the output
# resolution (with mlx's own convolution, which unrolls each 3x3 neighbourhood, several GB: the GPU's
# path); smaller tiles cost time instead, as the overlap is run again (docs/performance.md).
DEFAULT_TILE = 128
DEFAULT_OVERLAP = 16
ALIGN = 4  # tiles start at multiples of this, so pixel-unshuffling networks (x2plus) see whole cells


def upscale_array(
    model: nn.Module,
    scale: int,
    image: np.ndarray,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """`image` (H, W, C) float32 in [0, 1] upscaled `scale` times by `model`, as float32 (unclamped).

    `tile` 0 runs the whole image at once. `progress(done, total)` is called after each tile."""
    model = for_device(model)
    height, width, _ = image.shape
    if tile <= 0 or (tile >= height and tile >= width):
        out = model(mx.array(image)[None])
        mx.eval(out)
        if progress:
            progress(1, 1)
        return np.array(out[0], dtype=np.float32)
    tile = max(ALIGN, tile - tile % ALIGN)
    overlap = overlap + -overlap % ALIGN
    starts = [(y, x) for y in range(0, height, tile) for x in range(0, width, tile)]
    result: np.ndarray | None = None
    for done, (y, x) in enumerate(starts, 1):
        top, left = max(0, y - overlap), max(0, x - overlap)
        bottom, right = min(height, y + tile + overlap), min(width, x + tile + overlap)
        out = model(mx.array(image[top:bottom, left:right])[None])
        mx.eval(out)
        if result is None:
            result = np.empty((height * scale, width * scale, out.shape[-1]), np.float32)
        kept_h, kept_w = min(tile, height - y), min(tile, width - x)
        oy, ox = (y - top) * scale, (x - left) * scale
        result[y * scale : (y + kept_h) * scale, x * scale : (x + kept_w) * scale] = np.array(
            out[0, oy : oy + kept_h * scale, ox : ox + kept_w * scale]
        )
        if progress:
            progress(done, len(starts))
    assert result is not None
    return result
