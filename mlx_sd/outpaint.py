"""Outpainting: a request whose init image grows by `outpaint` = (left, right, top, bottom) pixels
becomes, before any model runs, an inpainting request on the grown canvas (`outpainted`).

- The canvas holds the init image (at the request's width x height) where it was and, in the new
  area, a noise fill in the spirit of A1111's "Outpainting mk2": the border's colours smeared
  outwards plus noise with the picture's own power spectrum. An ordinary model keeps part of its
  start image at any strength below 1, so it finds colours and grain to continue, not flat grey.
  (9-channel inpainting models see the new area grey in their masked conditioning.)
- The mask covers the new area and an overlap into the picture (`overlap`), so that after the mask
  blur the whole new area is repainted and the seam falls inside the old picture, where the final
  composite blends generated and original pixels.
- The fill's noise comes from a fixed seed: the same request makes the same canvas, so the image's
  seed remakes the image.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageFilter

from .image_prep import to_image
from .request import GenerationRequest

LATENT_GRID = 8  # overlaps are whole latent cells, so the latent mask follows the pixel mask
FILL_SEED = 21
SMEAR = 0.25  # blur radius of the smeared border colours, as a fraction of the widest new side
GRAIN = 0.5  # the fill's noise, in standard deviations of the picture's own colour


def overlap(mask_blur: int) -> int:
    """Pixels of the old picture the mask also covers: twice the blur (where a Gaussian has fallen
    to about 2%), in whole latent cells, at least one."""
    return max(LATENT_GRID, math.ceil(2 * mask_blur / LATENT_GRID) * LATENT_GRID)


def outpaint_mask(width: int, height: int, sides: tuple[int, int, int, int], covered: int) -> np.ndarray:
    """(grown height, grown width) uint8, 255 = repaint: the new area plus `covered` pixels of the
    old picture along each side that grows."""
    left, right, top, bottom = sides
    across, down = min(covered, width), min(covered, height)  # a narrow picture is covered whole
    mask = np.zeros((height + top + bottom, width + left + right), np.uint8)
    if left:
        mask[:, : left + across] = 255
    if right:
        mask[:, left + width - across :] = 255
    if top:
        mask[: top + down] = 255
    if bottom:
        mask[top + height - down :] = 255
    return mask


def _blurred(pixels: np.ndarray, radius: float) -> np.ndarray:
    """(H, W, 3) in [0, 1] through Pillow's Gaussian blur (in 8 bits: plenty for a fill)."""
    blurred = to_image(pixels).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(blurred, dtype=np.float32) / 255.0


def _spectral_noise(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean noise with the power spectrum of `pixels` (H, W, 3), channel by channel, scaled to
    unit standard deviation: the picture's kind of grain at random places."""
    centred = pixels - pixels.mean(axis=(0, 1))
    # the real FFT's half spectrum: the inverse of any phases given to it is real
    magnitude = np.abs(np.fft.rfft2(centred, axes=(0, 1)))
    phase = np.exp(2j * np.pi * rng.random(magnitude.shape))
    noise = np.fft.irfft2(magnitude * phase, s=pixels.shape[:2], axes=(0, 1))
    return noise / np.maximum(noise.std(axis=(0, 1)), 1e-6)


def grown_canvas(picture: np.ndarray, sides: tuple[int, int, int, int]) -> np.ndarray:
    """(H, W, 3) in [0, 1] -> the grown canvas: the picture in place, the noise fill around it."""
    left, right, top, bottom = sides
    height, width = picture.shape[:2]
    padded = np.pad(picture, ((top, bottom), (left, right), (0, 0)), mode="edge")
    smeared = _blurred(padded, SMEAR * max(sides))
    grain = _spectral_noise(padded, np.random.default_rng(FILL_SEED)) * picture.std(axis=(0, 1)) * GRAIN
    canvas = np.clip(smeared + grain, 0.0, 1.0).astype(np.float32)
    canvas[top : top + height, left : left + width] = picture
    return canvas


def outpainted(request: GenerationRequest, picture: np.ndarray) -> GenerationRequest:
    """The inpainting request that outpaints `request`: `picture` is its init image prepared at its
    width x height; the result's size is the grown canvas's."""
    sides = request.outpaint
    canvas = grown_canvas(picture, sides)
    mask = outpaint_mask(request.width, request.height, sides, overlap(request.mask_blur))
    return dataclasses.replace(
        request, init_image=to_image(canvas), mask=Image.fromarray(mask, "L"),
        width=canvas.shape[1], height=canvas.shape[0], outpaint=(0, 0, 0, 0),
    )
