"""Cheap live previews: a fixed linear map from the 4 latent channels to RGB, no VAE.

The factors are the published approximations A1111 ships in `modules/sd_vae_approx.py`
(`cheap_approximation`, first posted for SD 1.4 on the Hugging Face forum thread "Decoding latents to
RGB without upscaling"): one 4x3 matrix for the SD1/SD2 VAE and one for the SDXL VAE (also the
refiner's). They act on the scaled latent the sampler works with and give RGB in about [-1, 1]. They
were checked against several independent copies of that file, not against a real VAE decode (no real
weights are available here); for tiny random test models they are only a stand-in.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from PIL import Image

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
FACTORS = {"sd1": SD_FACTORS, "sd2": SD_FACTORS, "sdxl": SDXL_FACTORS, "sdxl-refiner": SDXL_FACTORS}


def latent_to_rgb(latent: mx.array | np.ndarray, family: str) -> np.ndarray:
    """One scaled latent (h, w, 4) -> RGB (h, w, 3) float32 in [0, 1]."""
    if isinstance(latent, mx.array):
        latent = np.array(latent.astype(mx.float32))  # numpy cannot take bfloat16 directly
    latent = np.asarray(latent, dtype=np.float32)
    if latent.ndim != 3 or latent.shape[-1] != 4:
        raise ValueError(f"expected one latent of shape (h, w, 4), got {latent.shape}")
    if family not in FACTORS:
        raise ValueError(f"family {family!r} has no preview factors; expected one of {', '.join(FACTORS)}")
    rgb = latent @ FACTORS[family]
    return np.clip((rgb + 1.0) / 2.0, 0.0, 1.0)


def preview_image(latent: mx.array | np.ndarray, family: str) -> Image.Image:
    """A latent-resolution RGB preview (1/8 of the image's width and height)."""
    return Image.fromarray(np.round(latent_to_rgb(latent, family) * 255).astype(np.uint8), "RGB")
