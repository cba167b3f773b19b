"""Upscaling a picture by any factor, as A1111 does: an upscaler model is run (up to three times)
until the picture is at least the target size, then Lanczos resamples it to the exact size; the
classic filters resample directly."""

from __future__ import annotations

import math
from collections.abc import Callable

import mlx.nn as nn
import numpy as np
from PIL import Image

from .tiling import DEFAULT_OVERLAP, DEFAULT_TILE, upscale_array

CLASSIC_FILTERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
MAX_MODEL_PASSES = 3  # A1111's limit: a 4x model reaches 64x, a 2x model 8x
# The largest generated picture (2048) upscaled 4x; its float32 result alone is 0.8 GB.
MAX_UPSCALED_SIDE = 8192


def upscaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The size of a `width` x `height` picture upscaled `scale` times; a ValueError in one line when
    the scale is not positive or the result would exceed MAX_UPSCALED_SIDE."""
    if not 0 < scale < math.inf:
        raise ValueError(f"the upscale factor must be a finite number above 0, got {scale:g}")
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if max(size) > MAX_UPSCALED_SIDE:
        raise ValueError(
            f"upscaling {width}x{height} by {scale:g} gives {size[0]}x{size[1]}, beyond the limit of "
            f"{MAX_UPSCALED_SIDE} pixels a side; use a scale of at most {MAX_UPSCALED_SIDE / max(width, height):.2f}"
        )
    return size


def upscale_image(
    image: Image.Image,
    scale: float,
    upscaler: nn.Module | str,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    progress: Callable[[int, int], None] | None = None,
) -> Image.Image:
    """`image` (as RGB) `scale` times larger; `upscaler` is a network from mlx_sd.upscalers or the
    name of one of CLASSIC_FILTERS. `progress(done, total)` reports a model's tiles, pass by pass."""
    target = upscaled_size(image.width, image.height, scale)
    image = image.convert("RGB")
    if isinstance(upscaler, str):
        return image.resize(target, CLASSIC_FILTERS[upscaler])
    for _ in range(MAX_MODEL_PASSES):
        if image.width >= target[0] and image.height >= target[1]:
            break
        pixels = np.asarray(image, dtype=np.float32) / 255
        out = upscale_array(upscaler, upscaler.config.scale, pixels, tile, overlap, progress)
        image = Image.fromarray(np.round(np.clip(out, 0, 1) * 255).astype(np.uint8))
    return image if image.size == target else image.resize(target, Image.Resampling.LANCZOS)
