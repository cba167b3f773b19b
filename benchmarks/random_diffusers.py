"""Seeded random full-size Stable Diffusion weights saved as a diffusers folder (torch side).

Used by benchmarks.sd_weights when its cache lacks a family; kept apart so that the benchmark's MLX
process never imports torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from mlx_sd.config import CLIPTextConfig, ModelConfig
from reference import models

PIPELINES = {"sd1": StableDiffusionPipeline, "sd2": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}


def save_diffusers(config: ModelConfig, folder: Path) -> None:
    """Write `config`'s architecture with seeded unit-scale random weights in float16 to `folder`."""
    generator = torch.Generator().manual_seed(0)
    unet = _unit_scale(models.unet(config.unet), generator)
    vae = _unit_scale(models.vae(config.vae), generator)
    scheduler = EulerDiscreteScheduler(
        beta_start=config.noise_schedule.beta_start, beta_end=config.noise_schedule.beta_end,
        beta_schedule=config.noise_schedule.beta_schedule, prediction_type=config.prediction_type,
        timestep_spacing="leading", steps_offset=1,
    )
    components: dict = {"unet": unet, "vae": vae, "scheduler": scheduler}
    for name, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        text_config = getattr(config, name)
        if text_config is not None:
            components[name] = _text_encoder(text_config, generator)
            components[tok] = models.bundled_tokenizer(text_config.pad_token_id)
    pipeline_cls = PIPELINES[config.family]
    if pipeline_cls is StableDiffusionPipeline:
        components |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    else:
        components |= {"force_zeros_for_empty_prompt": config.force_zeros_for_empty_prompt, "add_watermarker": False}
    models.save_hub_layout(pipeline_cls(**components).to(torch.float16), folder)


@torch.no_grad()
def _unit_scale(model: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """normal(0, 1/sqrt(fan_in)) weights, small biases, norm scales near 1: activations stay unit-scale
    (default initialisations can drift towards denormals or overflow over 20 steps, which changes speed)."""
    for module in model.modules():
        params = dict(module.named_parameters(recurse=False))
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            params["weight"].normal_(0.0, 1.0 / math.sqrt(params["weight"][0].numel()), generator=generator)
        elif isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            params["weight"].normal_(1.0, 0.1, generator=generator)
        elif isinstance(module, torch.nn.Embedding):
            params["weight"].normal_(0.0, 1.0, generator=generator)
        if params.get("bias") is not None:
            params["bias"].normal_(0.0, 0.1, generator=generator)
    return model.eval()


def _text_encoder(config: CLIPTextConfig, generator: torch.Generator) -> torch.nn.Module:
    model = models.text_encoder(config)
    _unit_scale(model, generator)
    with torch.no_grad():  # keep the residual stream unit-scale through every layer
        for name, param in model.named_parameters():
            if name.endswith(("self_attn.out_proj.weight", "mlp.fc2.weight")):
                param.mul_(1 / math.sqrt(config.num_hidden_layers))
    return model

