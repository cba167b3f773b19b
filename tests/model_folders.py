"""Tiny model folders in our MLX format, written from randomly initialised models of our own classes.

Widths, depths and levels shrink; every rule that tensor shapes cannot reveal (heads, GroupNorm
groups, activations, vocabulary, positions, time-embedding width) is the family's. Used wherever a
test needs a converted model without going through the converter (tests/tiny_models.py builds the
diffusers/single-file sources the converter tests start from).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_sd.config import CLIPTextConfig, ModelConfig, UNetConfig, VAEConfig
from mlx_sd.device import dtype_from_name
from mlx_sd.model_format import TOKENIZER_FOR, write_model
from mlx_sd.pipeline import build_models
from mlx_sd.tokenizer import BUNDLED_FOLDER

CLIP_L_TINY = CLIPTextConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2)
CLIP_L_SDXL_TINY = dataclasses.replace(CLIP_L_TINY, hidden_layer=-2, final_norm=False)
BIGG_TINY = CLIPTextConfig(
    hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=2, hidden_act="gelu",
    projection_dim=128, hidden_layer=-2, final_norm=False, pad_token_id=0,
)
VAE_TINY = VAEConfig(block_out_channels=(32, 32, 64, 64))

UNET_SD1_TINY = UNetConfig(sample_size=8, block_out_channels=(32, 64, 64, 64), cross_attention_dim=128)
UNET_SDXL_TINY = UNetConfig(
    sample_size=8,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(64, 128, 128),
    transformer_layers_per_block=[1, 1, 2],
    attention_head_dim=[1, 2, 2],
    cross_attention_dim=256,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=128 + 6 * 256,
)
UNET_REFINER_TINY = dataclasses.replace(
    UNET_SDXL_TINY,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(64, 128, 128, 128),
    transformer_layers_per_block=1,
    attention_head_dim=[1, 2, 2, 2],
    cross_attention_dim=128,
    projection_class_embeddings_input_dim=128 + 5 * 256,
)

CONFIGS = {
    "sd1": ModelConfig("sd1", UNET_SD1_TINY, VAE_TINY, text_encoder=CLIP_L_TINY, default_size=64),
    "sdxl": ModelConfig(
        "sdxl", UNET_SDXL_TINY, VAE_TINY, text_encoder=CLIP_L_SDXL_TINY, text_encoder_2=BIGG_TINY,
        default_size=64, force_zeros_for_empty_prompt=True,
    ),
    "sdxl-refiner": ModelConfig(
        "sdxl-refiner", UNET_REFINER_TINY, VAE_TINY, text_encoder_2=BIGG_TINY, default_size=64,
        requires_aesthetics_score=True,
    ),
}


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, dict[str, mx.array]]:
    """Random parameters of our own models, evaluated and cast to the config's storage dtype."""
    mx.random.seed(seed)
    storage = dtype_from_name(config.dtype)
    components = {}
    for name, model in build_models(config).items():
        weights = {k: v.astype(storage) for k, v in tree_flatten(model.parameters())}
        mx.eval(weights)
        components[name] = weights
    return components


def write_random_model(folder: Path, config: ModelConfig, seed: int = 0) -> dict[str, dict[str, mx.array]]:
    """Write a model folder with random weights and the bundled tokenizer; returns the weights written."""
    components = random_weights(config, seed)
    tokenizers = {TOKENIZER_FOR[name]: BUNDLED_FOLDER for name in config.text_encoders}
    write_model(folder, config, components, tokenizers)
    return components
