"""Generate with the trained diffusers pipeline on torch, for scoring while we train."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from PIL import Image

from .evaluate import Generate, Img2Img

# evaluate.SAMPLER_FAMILIES as diffusers schedulers
SCHEDULERS = {
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "ddim": DDIMScheduler,
}


def load_pipeline(folder: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_sampler(pipe: StableDiffusionPipeline, sampler: str) -> StableDiffusionPipeline:
    """The same models with `sampler`'s scheduler (a new pipeline object; `pipe` is unchanged)."""
    if sampler not in SCHEDULERS:
        raise ValueError(f"sampler {sampler!r} is not one of {', '.join(SCHEDULERS)}")
    scheduler = SCHEDULERS[sampler].from_config(pipe.scheduler.config)
    variant = StableDiffusionPipeline(**{**pipe.components, "scheduler": scheduler}, requires_safety_checker=False)
    variant.set_progress_bar_config(disable=True)
    return variant


def generator(pipe: StableDiffusionPipeline, steps: int = 20, cfg: float = 6.0, size: int = 64) -> Generate:
    def generate(prompt: str, seed: int) -> Image.Image:
        return pipe(
            prompt, height=size, width=size, num_inference_steps=steps, guidance_scale=cfg,
            generator=torch.Generator().manual_seed(seed),
        ).images[0]

    return generate


def img2img_generator(pipe: StableDiffusionPipeline, steps: int = 20, cfg: float = 6.0) -> Img2Img:
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)

    def run(image: Image.Image, prompt: str, strength: float, seed: int) -> Image.Image:
        return img2img(
            prompt, image=image, strength=strength, num_inference_steps=steps, guidance_scale=cfg,
            generator=torch.Generator().manual_seed(seed),
        ).images[0]

    return run
