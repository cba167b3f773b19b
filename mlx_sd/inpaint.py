"""Inpainting in latent space, for both kinds of model, and the final pixel composite.

- 9-channel inpainting models (docs/facts.md §2.3 rule 4) see, after the 4 noisy-latent channels, the mask
  at latent resolution (1 = repaint) and the scaled VAE latent of the init image with the repainted
  pixels set to grey (0 in [-1, 1]). Without a mask the whole image is repainted, so the conditioning
  is an all-ones mask and an all-grey image, as A1111 does for txt2img and plain img2img. The
  masked-image latent is the posterior mean, so the conditioning does not depend on the seed.
- Ordinary models repaint only the mask: after every model call the prediction of the clean latent
  is replaced by the original latent outside the mask (A1111's blend). A sampler step from
  x = original + sigma * n then lands on original + sigma_next * n outside the mask, i.e. the latent
  there is the noised original at every step, and exactly the original after the last step.
- Both: the decoded image is composited with the init image through the blurred mask, so pixels
  outside the mask are the original's.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import numpy as np

from .image_prep import binary_mask, latent_mask
from .vae_codec import VAECodec

DenoiserFn = Callable[[mx.array, float], mx.array]


def repaint_latent_mask(mask: np.ndarray | None, height: int, width: int, factor: int) -> mx.array:
    """(1, h, w, 1) float32: 1 where the latent is repainted. No mask repaints everything."""
    if mask is None:
        return mx.ones((1, height // factor, width // factor, 1), dtype=mx.float32)
    return mx.array(latent_mask(binary_mask(mask), factor))[None, :, :, None]


def inpainting_concat(
    codec: VAECodec, init: np.ndarray | None, mask: np.ndarray | None, height: int, width: int,
    batch: int, tiling: bool | None = None,
) -> mx.array:
    """The extra UNet input of a 9-channel model: (batch, h, w, 5) = mask, masked-image latent."""
    repaint = np.ones((height, width), np.float32) if mask is None else binary_mask(mask)
    image = np.full((height, width, 3), 0.5, np.float32) if init is None else init
    masked = image * (1.0 - repaint[..., None]) + 0.5 * repaint[..., None]
    latent = codec.latents(codec.encode(mx.array(masked)[None], tiling))
    mask_latent = repaint_latent_mask(mask, height, width, codec.downscale)
    cond = mx.concatenate([mask_latent, latent], axis=-1)
    return mx.broadcast_to(cond, (batch, *cond.shape[1:]))


class BlendedDenoiser:
    """Wraps a denoiser D(x, sigma) so that its prediction outside the mask is the original latent."""

    def __init__(self, denoiser: DenoiserFn, original: mx.array, repaint: mx.array):
        self.denoiser = denoiser
        self.original = original
        self.repaint = repaint

    def __call__(self, x: mx.array, sigma: float) -> mx.array:
        denoised = self.denoiser(x, sigma)
        return denoised * self.repaint + self.original * (1.0 - self.repaint)


def composite(generated: np.ndarray, init: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) generated pixels over the (H, W, 3) init image through the (H, W) blurred mask."""
    weight = mask[None, :, :, None]
    return generated * weight + init[None] * (1.0 - weight)
