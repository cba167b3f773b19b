"""Stage 1: the AutoencoderKL, trained on the shapes pictures alone."""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
from diffusers import AutoencoderKL

from mlx_sd.config import VAEConfig
from reference import models

from .demo_config import VAETraining


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def random_crops(images: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One `size` crop per picture, at offsets on the 4-pixel grid so the latent grid stays aligned.

    Convolutions do not care where a patch came from, so small crops teach the VAE the same edges
    at a fraction of the cost (Stable Diffusion's VAE, too, was trained on crops smaller than its use)."""
    full = images.shape[1]
    if size == full:
        return images
    offsets = rng.integers(0, (full - size) // 4 + 1, size=(len(images), 2)) * 4
    return np.stack([img[y:y + size, x:x + size] for img, (y, x) in zip(images, offsets)])


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(
    config: VAEConfig, recipe: VAETraining, images: np.ndarray, seed: int,
    log: Callable[[str], None] = print,
) -> tuple[AutoencoderKL, list[float]]:
    """Train on random batches of `images`; returns the VAE (eval mode) and the loss per step."""
    torch.manual_seed(seed)
    vae = models.vae(config)
    optimizer = torch.optim.Adam(vae.parameters(), lr=recipe.learning_rate)
    order = np.random.default_rng([seed, 1])
    losses: list[float] = []
    start = time.monotonic()
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe.steps, recipe.learning_rate, recipe.warmup_steps)
        batch = to_tensor(random_crops(images[order.integers(0, len(images), recipe.batch_size)], recipe.crop_size, order))
        posterior = vae.encode(batch).latent_dist
        latents = posterior.sample()
        reconstruction = vae.decode(latents).sample
        # L1 keeps edges sharp; the KL term (per latent element) only keeps the latents tame.
        reconstruction_loss = (reconstruction - batch).abs().mean() + (reconstruction - batch).pow(2).mean()
        kl = posterior.kl().mean() / latents[0].numel()
        loss = reconstruction_loss + recipe.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        losses.append(float(reconstruction_loss.detach()))
        if step % 100 == 0 or step == recipe.steps - 1:
            log(f"vae step {step:5d}  reconstruction {losses[-1]:.4f}  kl {float(kl.detach()):.3f}  "
                f"{time.monotonic() - start:6.0f}s")
    return vae.eval(), losses


@torch.no_grad()
def encode_dataset(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every picture, unscaled: (N, 4, h, w) each."""
    means, stds = [], []
    for first in range(0, len(images), batch_size):
        posterior = vae.encode(to_tensor(images[first:first + batch_size])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)
