"""The demo model's torch side: tokenizer, noise schedule, and the diffusers pipeline it is saved as.
(The modules are built, and the pipeline saved, by reference.models.)"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from mlx_sd.config import NoiseScheduleConfig


def load_tokenizer(folder: Path) -> CLIPTokenizer:
    if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
        raise FileNotFoundError(f"expected vocab.json and merges.txt in {folder}, found {sorted(folder.glob('*'))}")
    return CLIPTokenizer.from_pretrained(str(folder))


def alphas_cumprod(schedule: NoiseScheduleConfig) -> torch.Tensor:
    """ᾱ_t of the DDPM training schedule (docs/facts.md §1.7), float64 then float32 like diffusers."""
    if schedule.beta_schedule != "scaled_linear":
        raise ValueError(f"expected beta_schedule 'scaled_linear', got {schedule.beta_schedule!r}")
    betas = torch.linspace(
        schedule.beta_start**0.5, schedule.beta_end**0.5, schedule.num_train_timesteps, dtype=torch.float32
    ) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def make_pipeline(
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    schedule: NoiseScheduleConfig,
) -> StableDiffusionPipeline:
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=schedule.num_train_timesteps,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
        beta_schedule=schedule.beta_schedule,
        prediction_type="epsilon",
        timestep_spacing="linspace",
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
