"""Cheap live previews: a fixed linear map from latent channels to RGB, no VAE in the loop.

Two sources for the map:
- The Stable Diffusion VAE architecture (SD1/SD2 and SDXL, including fine-tuned VAEs, which keep the
  latent space) uses the published approximations A1111 ships in `modules/sd_vae_approx.py`
  (`cheap_approximation`, first posted for SD 1.4 on the Hugging Face forum thread "Decoding latents
  to RGB without upscaling"): one 4x3 matrix for SD1/SD2 and one for SDXL (also the refiner). They act
  on the scaled latent and give RGB in about [-1, 1]. They were checked against several independent
  copies of that file, not against a real VAE decode (no real weights are available here).
- Any other VAE (the demo model's, tiny test models) gets a map fitted once by least squares: a few
  calibration pictures (colour gradients and flat patches) are encoded, their latents decoded by the
  model's own VAE, and each latent cell's mean decoded colour is regressed on its latent vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from PIL import Image

from .config import VAEConfig
from .vae_codec import VAECodec

# rows: latent channels 0-3; columns: R, G, B
SD_FACTORS = np.array(
    [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ],
    dtype=np.float32,
)
SDXL_FACTORS = np.array(
    [
        [0.3448, 0.4168, 0.4395],
        [-0.1953, -0.0290, 0.0250],
        [0.1074, 0.0886, -0.0163],
        [-0.3730, -0.2499, -0.2088],
    ],
    dtype=np.float32,
)
PUBLISHED = {"sd1": SD_FACTORS, "sd2": SD_FACTORS, "sdxl": SDXL_FACTORS, "sdxl-refiner": SDXL_FACTORS}
SD_VAE_ARCHITECTURE = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "latent_channels": 4}
CALIBRATION_SIZE = 64  # pixels per side of each calibration picture


@dataclass(frozen=True)
class PreviewMap:
    """RGB in [-1, 1] = latent @ matrix + bias, for scaled latents (what the sampler works with)."""

    matrix: np.ndarray  # (latent_channels, 3)
    bias: np.ndarray  # (3,)
    source: str  # "published" or "fitted"

    def rgb(self, latent: mx.array | np.ndarray) -> np.ndarray:
        """One latent (h, w, C) -> RGB (h, w, 3) float32 in [0, 1]."""
        if isinstance(latent, mx.array):
            latent = np.array(latent.astype(mx.float32))  # numpy cannot take bfloat16 directly
        latent = np.asarray(latent, dtype=np.float32)
        channels = self.matrix.shape[0]
        if latent.ndim != 3 or latent.shape[-1] != channels:
            raise ValueError(f"expected one latent of shape (h, w, {channels}), got {latent.shape}")
        return np.clip((latent @ self.matrix + self.bias + 1.0) / 2.0, 0.0, 1.0)

    def image(self, latent: mx.array | np.ndarray) -> Image.Image:
        """A preview at latent resolution (1/8 of the image's sides for Stable Diffusion)."""
        return Image.fromarray(np.round(self.rgb(latent) * 255).astype(np.uint8), "RGB")


def published(family: str, vae: VAEConfig) -> PreviewMap | None:
    """A1111's factors, when the VAE has the Stable Diffusion architecture (and so its latent space)."""
    standard = all(getattr(vae, key) == value for key, value in SD_VAE_ARCHITECTURE.items())
    if not standard or family not in PUBLISHED:
        return None
    return PreviewMap(PUBLISHED[family], np.zeros(3, np.float32), "published")


def calibration_pictures(size: int = CALIBRATION_SIZE) -> np.ndarray:
    """(5, size, size, 3) in [0, 1]: three two-colour gradients, a 4 x 4 chart of flat colours and a
    chart of greys, so every colour direction and both ends of the range are seen."""
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    x, y = np.meshgrid(ramp, ramp)
    constant = np.full_like(x, 0.5)
    gradients = [np.stack(channels, -1) for channels in ((x, y, constant), (constant, x, y), (y, constant, x))]
    cells = np.minimum((np.arange(size) * 4) // size, 3)
    levels = np.array([0.0, 0.35, 0.7, 1.0], np.float32)
    chart = np.stack([levels[cells][None, :].repeat(size, 0), levels[cells][:, None].repeat(size, 1),
                      levels[(cells[:, None] + cells[None, :]) % 4]], -1)
    greys = np.repeat(((cells[:, None] * 4 + cells[None, :]) / 15.0)[..., None], 3, axis=-1).astype(np.float32)
    return np.stack([*gradients, chart, greys]).astype(np.float32)


def fit(codec: VAECodec, size: int = CALIBRATION_SIZE) -> PreviewMap:
    """Least-squares map from scaled latents to the mean decoded colour of each latent cell."""
    pictures = mx.array(calibration_pictures(size))
    latents = codec.latents(codec.encode(pictures, tiling=False))
    decoded = np.array(codec.decode(latents, tiling=False)) * 2.0 - 1.0
    f = codec.downscale
    n, h, w, channels = latents.shape
    cells = decoded.reshape(n, h, f, w, f, 3).mean(axis=(2, 4)).reshape(-1, 3)
    inputs = np.concatenate([np.array(latents).reshape(-1, channels), np.ones((n * h * w, 1), np.float32)], axis=1)
    solution, *_ = np.linalg.lstsq(inputs.astype(np.float64), cells.astype(np.float64), rcond=None)
    return PreviewMap(solution[:channels].astype(np.float32), solution[channels].astype(np.float32), "fitted")


def preview_map(family: str, codec: VAECodec) -> PreviewMap:
    return published(family, codec.vae.config) or fit(codec)
