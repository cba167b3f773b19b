"""Stage 2: the text encoder and the UNet, trained together on VAE latents (epsilon objective)."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from mlx_sd.config import CLIPTextConfig, NoiseScheduleConfig, UNetConfig
from reference import models

from .demo_config import DiffusionTraining
from .shapes import ShapeLabel, caption_for
from .torch_models import alphas_cumprod
from .train_vae import learning_rate


def tokenize(tokenizer: CLIPTokenizer, captions: Sequence[str]) -> torch.Tensor:
    return tokenizer(
        list(captions), padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids


class EMA:
    """Exponential moving average of parameters; the averaged weights are the ones shipped."""

    def __init__(self, modules: Sequence[torch.nn.Module], decay: float):
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # short memory early on, when weights move fast
        for shadow, param in zip(self.shadow, self.params):
            shadow.lerp_(param, 1 - decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for shadow, param in zip(self.shadow, self.params):
            param.copy_(shadow)


def loss_weights(alpha_bar: torch.Tensor, snr_gamma: float | None) -> torch.Tensor:
    """Per-sample weights of the epsilon MSE: min(SNR, gamma) / SNR, or 1 without gamma."""
    if snr_gamma is None:
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=snr_gamma) / snr


def train_diffusion(
    text_config: CLIPTextConfig,
    unet_config: UNetConfig,
    schedule: NoiseScheduleConfig,
    recipe: DiffusionTraining,
    tokenizer: CLIPTokenizer,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    labels: Sequence[ShapeLabel],
    seed: int,
    log: Callable[[str], None] = print,
) -> tuple[CLIPTextModel, UNet2DConditionModel, list[float]]:
    """`latent_mean`/`latent_std` are the VAE posterior, already multiplied by the scaling factor.

    Each step draws a fresh caption for every picture (so the phrasing varies across epochs) and
    replaces `caption_dropout` of them by the empty caption."""
    torch.manual_seed(seed)
    text_encoder = models.text_encoder(text_config)
    unet = models.unet(unet_config)
    params = [*text_encoder.parameters(), *unet.parameters()]
    optimizer = torch.optim.Adam(params, lr=recipe.learning_rate)
    ema = EMA([text_encoder, unet], recipe.ema_decay)
    alpha_bar = alphas_cumprod(schedule)
    rng = np.random.default_rng([seed, 2])
    empty = tokenize(tokenizer, [""])[0]
    losses: list[float] = []
    start = time.monotonic()
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe.steps, recipe.learning_rate, recipe.warmup_steps)
        index = rng.integers(0, len(labels), recipe.batch_size)
        ids = tokenize(tokenizer, [caption_for(labels[i], rng) for i in index])
        ids[torch.from_numpy(rng.random(recipe.batch_size) < recipe.caption_dropout)] = empty
        x0 = latent_mean[index] + latent_std[index] * torch.randn_like(latent_std[index])
        noise = torch.randn_like(x0)
        t = torch.randint(0, schedule.num_train_timesteps, (recipe.batch_size,))
        a = alpha_bar[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        context = text_encoder(ids).last_hidden_state
        error = (unet(noisy, t, context).sample - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (loss_weights(alpha_bar[t], recipe.snr_gamma) * error).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.update(step)
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == recipe.steps - 1:
            recent = float(np.mean(losses[-100:]))
            log(f"diffusion step {step:5d}  loss {recent:.4f}  {time.monotonic() - start:6.0f}s")
    ema.copy_to_params()
    return text_encoder.eval(), unet.eval(), losses
