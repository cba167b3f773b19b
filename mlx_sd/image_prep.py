"""Init images and masks for img2img and inpainting, as arrays at the requested size.

- Init images of any mode become 8-bit RGB: transparency (RGBA, LA, palette with a transparent
  index) is composited over **white**, A1111's default `img2img_background_color`; 16-bit greyscale
  ("I;16", and "I" as Pillow opens 16-bit PNGs) is scaled to 8 bits rather than clipped, which is
  what a plain Pillow `convert` would do; everything else goes through Pillow's conversion.
- Masks become greyscale with white = repaint; a transparent part of a mask counts as black (keep).
- Both are stretched to the requested size with Lanczos (A1111's default "Just resize", and what
  diffusers' image processor does). The mask is blurred after resizing, so `mask_blur` is in output
  pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

BACKGROUND = (255, 255, 255)  # transparent init-image pixels become white, as in A1111
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
MASK_THRESHOLD = 0.5  # blurred mask values at or above this are repainted by inpainting models


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    return Image.fromarray(np.round(np.clip(values, 0, 65535) / 257.0).astype(np.uint8), "L")


def _without_alpha(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """Composite transparency over `background`; RGB or L out, depending on the input."""
    if image.mode in SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_l(image)
    if image.mode in ("RGBA", "LA", "RGBa", "La", "PA") or image.has_transparency_data:
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB (see the module docstring for the rules)."""
    return _without_alpha(image, BACKGROUND).convert("RGB")


def to_mask(mask: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit greyscale mask, white = repaint, transparent = keep."""
    return _without_alpha(mask, (0, 0, 0)).convert("L")


def prepare_init_image(image: Image.Image, width: int, height: int) -> np.ndarray:
    """(height, width, 3) float32 in [0, 1]."""
    rgb = to_rgb(image)
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.float32) / 255.0


def prepare_mask(mask: Image.Image, width: int, height: int, blur: int) -> np.ndarray:
    """(height, width) float32 in [0, 1]: resized, then Gaussian-blurred by `blur` pixels."""
    grey = to_mask(mask)
    if grey.size != (width, height):
        grey = grey.resize((width, height), Image.Resampling.LANCZOS)
    if blur > 0:
        grey = grey.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(grey, dtype=np.float32) / 255.0


def binary_mask(mask: np.ndarray) -> np.ndarray:
    """1 where an inpainting model repaints (the blurred mask at or above one half), else 0."""
    return (mask >= MASK_THRESHOLD).astype(np.float32)


def latent_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """A (H, W) pixel mask at latent resolution (H/f, W/f): the top-left pixel of each f x f block,
    which is what diffusers' nearest-neighbour `interpolate` picks."""
    return np.ascontiguousarray(mask[::factor, ::factor])


def to_image(pixels: np.ndarray) -> Image.Image:
    """(H, W, 3) float in [0, 1] -> RGB image (rounded, not truncated)."""
    return Image.fromarray(np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")
