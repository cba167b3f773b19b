"""Images <-> scaled latents through the VAE, with the pipeline's memory and precision rules.

- Scaling: latents the sampler sees are the VAE's latents times `scaling_factor` (docs/facts.md §1.5).
- Slicing: a batch is decoded one image at a time, each evaluated before the next starts.
- Tiling (`vae_tiling`): `tiling=None` tiles only images larger than the VAE's tile
  (`sample_size` pixels); True or False force it on or off.
- Precision: a half-precision VAE whose output holds NaN or inf is run again in float32 (the SDXL VAE
  overflows in float16); a float16 VAE whose config says `force_upcast` (SDXL's does) runs in float32
  from the start, as diffusers does. The float32 copy is made once and kept.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
from mlx.utils import tree_map

from .vae import AutoencoderKL
from .vae_tiling import tiled

LOGVAR_RANGE = (-30.0, 20.0)  # the posterior's clamp, as LDM and diffusers do


def _finite(x: mx.array) -> bool:
    return bool(mx.all(mx.isfinite(x)).item())


class VAECodec:
    def __init__(self, vae: AutoencoderKL, prepare: Callable[[AutoencoderKL], AutoencoderKL] = lambda vae: vae):
        """`prepare` readies the float32 copy as `vae` was readied (the pipeline's module swaps)."""
        self.vae = vae
        self._prepare = prepare
        self._float32: AutoencoderKL | None = None
        self.float32_runs = 0  # how often the float32 VAE was used (fallbacks and force_upcast)

    @property
    def scaling_factor(self) -> float:
        return self.vae.config.scaling_factor

    @property
    def downscale(self) -> int:
        return self.vae.config.downscale

    def use_tiling(self, height: int, width: int, tiling: bool | None) -> bool:
        """Whether an image of height x width pixels is processed in tiles."""
        if tiling is None:
            return max(height, width) > self.vae.config.sample_size
        return bool(tiling)

    def float32_vae(self) -> AutoencoderKL:
        if self.vae.dtype == mx.float32:
            return self.vae
        if self._float32 is None:
            vae = AutoencoderKL(self.vae.config)
            vae.update(tree_map(lambda p: p.astype(mx.float32), self.vae.parameters()))
            mx.eval(vae.parameters())
            self._float32 = self._prepare(vae)
        return self._float32

    def _run(self, decode: bool, x: mx.array, tiling: bool | None) -> mx.array:
        pixels = x.shape[1:3] if not decode else (x.shape[1] * self.downscale, x.shape[2] * self.downscale)
        tile = self.use_tiling(pixels[0], pixels[1], tiling)

        def apply(vae: AutoencoderKL) -> mx.array:
            fn = vae.decode if decode else vae.encode
            if tile:
                size = vae.config.sample_size // self.downscale if decode else vae.config.sample_size
                out = tiled(fn, x, size, self.downscale if decode else 1 / self.downscale)
            else:
                out = fn(x)
            mx.eval(out)
            return out

        vae = self.vae
        if vae.dtype == mx.float16 and vae.config.force_upcast:
            vae = self.float32_vae()
        out = apply(vae)
        if vae.dtype != mx.float32 and not _finite(out):
            vae = self.float32_vae()
            out = apply(vae)
        if vae is not self.vae:
            self.float32_runs += 1
        return out.astype(mx.float32)

    def decode(self, latents: mx.array, tiling: bool | None = None) -> mx.array:
        """Scaled latents (B, h, w, 4) -> images (B, 8h, 8w, 3) float32 in [0, 1]."""
        unscaled = latents.astype(mx.float32) / self.scaling_factor
        images = [self._run(True, unscaled[i : i + 1], tiling) for i in range(unscaled.shape[0])]
        return mx.clip((mx.concatenate(images, axis=0) + 1.0) / 2.0, 0.0, 1.0)

    def encode(self, images: mx.array, tiling: bool | None = None) -> mx.array:
        """Images (B, H, W, 3) in [0, 1] -> posterior moments (B, H/8, W/8, 8): mean, then log-variance."""
        scaled = images.astype(mx.float32) * 2.0 - 1.0
        moments = [self._run(False, scaled[i : i + 1], tiling) for i in range(scaled.shape[0])]
        return mx.concatenate(moments, axis=0)

    def latents(self, moments: mx.array, noise: mx.array | None = None) -> mx.array:
        """Scaled latents from posterior moments: a sample mean + std * noise, or the mean without noise."""
        mean, logvar = mx.split(moments, 2, axis=-1)
        if noise is not None:
            std = mx.exp(0.5 * mx.clip(logvar, *LOGVAR_RANGE))
            mean = mean + std * noise
        return mean * self.scaling_factor
