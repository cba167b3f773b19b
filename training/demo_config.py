"""The demo model's architecture (as our own config dataclasses) and its training recipe.

The architecture is an ordinary SD1-family model, only narrow: a CLIP text tower read at its last layer
with the final LayerNorm, a UNet with cross attention, and an AutoencoderKL with a 4x latent factor
(64x64 pictures -> 16x16x4 latents). The torch modules are built from these configs, so whatever we
train is, by construction, expressible as a UNetConfig / VAEConfig / CLIPTextConfig.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mlx_sd.config import CLIPTextConfig, NoiseScheduleConfig, UNetConfig, VAEConfig

IMAGE_SIZE = 64

TEXT_ENCODER = CLIPTextConfig(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=2,
)
UNET = UNetConfig(
    sample_size=16,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 128),
    layers_per_block=1,
    # 4+ channels per group: with 1-channel groups every norm strips each channel's mean, and flat
    # colours (most of every picture) are what this data is made of.
    norm_num_groups=8,
    cross_attention_dim=64,
    attention_head_dim=[2, 4, 8],  # heads per level: 16 channels each
)
# scaling_factor is measured on the trained encoder (1 / std of the latents) and filled in then.
VAE = VAEConfig(
    block_out_channels=(32, 32, 64),
    layers_per_block=1,
    norm_num_groups=8,  # as in the UNet: 32 groups of 1 channel wash the colours out
    sample_size=IMAGE_SIZE,
)
NOISE_SCHEDULE = NoiseScheduleConfig()


@dataclass
class VAETraining:
    steps: int = 1500
    batch_size: int = 32
    crop_size: int = 32  # random crops of the 64x64 pictures
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    # Per latent element, relative to the per-pixel reconstruction loss. Strong enough that the
    # posterior std is ~1/4 of the latents' spread, so the decoder forgives the UNet's small errors.
    kl_weight: float = 1e-3


@dataclass
class DiffusionTraining:
    steps: int = 6000
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # empty captions teach the unconditional branch of CFG
    # Min-SNR-gamma weighting of the epsilon loss (Hang et al. 2023, diffusers' --snr_gamma): the
    # nearly-clean timesteps stop dominating the gradient, which converges several times faster.
    snr_gamma: float | None = 5.0


@dataclass
class TrainingRecipe:
    seed: int = 0
    dataset_size: int = 8000
    held_out: int = 256  # pictures after the training set, to check the VAE's reconstructions
    vae: VAETraining = field(default_factory=VAETraining)
    diffusion: DiffusionTraining = field(default_factory=DiffusionTraining)
    text_encoder: CLIPTextConfig = field(default_factory=lambda: dataclasses.replace(TEXT_ENCODER))
    unet: UNetConfig = field(default_factory=lambda: dataclasses.replace(UNET))
    vae_config: VAEConfig = field(default_factory=lambda: dataclasses.replace(VAE))
