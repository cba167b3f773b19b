"""Our config dataclasses as the reference's torch modules (transformers / diffusers), default-initialised.

Whoever needs torch weights for an architecture we describe (parity tests, the benchmark's random
full-size models, the demo model's training) builds it here, so each config field maps one way.
"""

from __future__ import annotations

import dataclasses

import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel

from mlx_sd.config import CLIPTextConfig, UNetConfig, VAEConfig


def text_encoder(config: CLIPTextConfig) -> transformers.CLIPTextModel | transformers.CLIPTextModelWithProjection:
    """CLIPTextModelWithProjection when the config has a projection (SDXL's bigG), else CLIPTextModel.
    How SD reads the tower (hidden_layer, final_norm) is not part of the torch module."""
    hf_config = transformers.CLIPTextConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        projection_dim=config.projection_dim or config.hidden_size,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    if config.projection_dim:
        return transformers.CLIPTextModelWithProjection(hf_config)
    return transformers.CLIPTextModel(hf_config)


def unet(config: UNetConfig) -> UNet2DConditionModel:
    # None fields are diffusers' defaults (it refuses num_attention_heads: its naming issue 2011).
    return UNet2DConditionModel(**{k: v for k, v in dataclasses.asdict(config).items() if v is not None})


def vae(config: VAEConfig) -> AutoencoderKL:
    levels = len(config.block_out_channels)
    return AutoencoderKL(
        **dataclasses.asdict(config),
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
    )
