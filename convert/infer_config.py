"""Component configs from tensor shapes plus the family rules that shapes cannot reveal.

Shapes give widths, numbers of layers and levels, transformer depths and channel counts. The rest is
fixed per family exactly as in the released models (the tiny-model rule): UNet heads = 8 per level for
SD1 and width/64 for SD2/SDXL; text-encoder heads = width/64; GroupNorm 32 groups; SDXL's
addition_time_embed_dim 256; quick_gelu for OpenAI CLIP, gelu for OpenCLIP. Shapes are in torch layout
and keyed by diffusers / transformers names.
"""

from __future__ import annotations

import re

from mlx_sd.config import (
    CLIP_L, CLIP_L_SDXL, OPENCLIP_BIGG, OPENCLIP_H, VAE_SD, VAE_SDXL, CLIPTextConfig, UNetConfig, VAEConfig,
)

from .errors import ConversionError
from .layout import Shape

Shapes = dict[str, Shape]

SD1_UNET_HEADS = 8
HEAD_DIM = 64
SDXL_TIME_EMBED_DIM = 256
# Each family's VAE scaling factor and float16 upcast (docs/facts.md §1.5, §7.2), from the released
# models' configs.
VAE_USAGE = {"sd1": VAE_SD, "sd2": VAE_SD, "sdxl": VAE_SDXL, "sdxl-refiner": VAE_SDXL}
# How each family reads its text encoders (docs/facts.md §1.4): hidden layer, final norm, pad id.
TEXT_USAGE = {
    ("sd1", "text_encoder"): CLIP_L,
    ("sd2", "text_encoder"): OPENCLIP_H,
    ("sdxl", "text_encoder"): CLIP_L_SDXL,
    ("sdxl", "text_encoder_2"): OPENCLIP_BIGG,
    ("sdxl-refiner", "text_encoder_2"): OPENCLIP_BIGG,
}


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in shapes if (m := regex.match(key))})


def _need(shapes: Shapes, key: str, component: str, ranks: tuple[int, ...] = ()) -> Shape:
    """The torch shape of a tensor a config is read from, of one of `ranks` (by default 4 for a
    convolution's weight, 2 for a Linear's or an Embedding's)."""
    if key not in shapes:
        raise ConversionError(
            f"{component}: the checkpoint is missing tensor {key!r}; the file is incomplete or damaged"
        )
    shape = shapes[key]
    ranks = ranks or ((4,) if "conv" in key.rsplit(".", 2)[-2] else (2,))
    if len(shape) not in ranks:
        raise ConversionError(
            f"{component}: tensor {key!r} has shape {shape}, where a rank-{' or '.join(map(str, ranks))} weight "
            "belongs; the file is damaged or an architecture mlx-sd does not know"
        )
    return shape


def _heads(width: int, what: str) -> int:
    if width % HEAD_DIM:
        raise ConversionError(
            f"{what} width {width} is not a multiple of the head size {HEAD_DIM}; unknown architecture"
        )
    return width // HEAD_DIM


def unet_config(shapes: Shapes, family: str) -> UNetConfig:
    need = lambda key, *ranks: _need(shapes, key, "unet", ranks)  # noqa: E731
    levels = len(_indices(shapes, r"down_blocks\.(\d+)\.resnets\.0\.conv1\.weight$"))
    layers = len(_indices(shapes, r"down_blocks\.0\.resnets\.(\d+)\.conv1\.weight$"))
    if levels == 0 or layers == 0:
        raise ConversionError("unet: no down-block resnets found; unknown architecture")
    widths = [need(f"down_blocks.{b}.resnets.0.conv1.weight")[0] for b in range(levels)]
    attention = [f"down_blocks.{b}.attentions.0.proj_in.weight" in shapes for b in range(levels)]
    if not any(attention):
        raise ConversionError("unet: no cross-attention blocks found; unknown architecture")
    depth = [
        len(_indices(shapes, rf"down_blocks\.{b}\.attentions\.0\.transformer_blocks\.(\d+)\."))
        for b in range(levels)
    ]
    mid_depth = len(_indices(shapes, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\."))
    # diffusers' mid block takes the last level's depth; levels without attention only fill the list
    # (one depth everywhere is written as an int, as diffusers' own configs do)
    if attention[-1] and depth[-1] != mid_depth:
        raise ConversionError(
            f"unet: mid-block depth {mid_depth} differs from the last level's {depth[-1]}; unknown architecture"
        )
    used = {d for d, a in zip(depth, attention) if a} | {mid_depth}
    per_level: int | list[int] = used.pop() if len(used) == 1 else [d if a else 1 for d, a in zip(depth, attention)]
    if isinstance(per_level, list):
        per_level[-1] = mid_depth
    first_attention = attention.index(True)
    proj_in = need(f"down_blocks.{first_attention}.attentions.0.proj_in.weight", 2, 4)  # Linear or 1x1 conv
    context = need(f"down_blocks.{first_attention}.attentions.0.transformer_blocks.0.attn2.to_k.weight")[1]
    conv_in = need("conv_in.weight")
    if family == "sd1":
        heads: int | list[int] = SD1_UNET_HEADS
    else:
        heads = [_heads(width, f"unet level {b}") for b, width in enumerate(widths)]
    config = UNetConfig(
        in_channels=conv_in[1],
        out_channels=need("conv_out.weight")[0],
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        block_out_channels=tuple(widths),
        layers_per_block=layers,
        cross_attention_dim=context,
        transformer_layers_per_block=per_level,
        attention_head_dim=heads,
        use_linear_projection=len(proj_in) == 2,
    )
    if "add_embedding.linear_1.weight" in shapes:
        config.addition_embed_type = "text_time"
        config.addition_time_embed_dim = SDXL_TIME_EMBED_DIM
        config.projection_class_embeddings_input_dim = need("add_embedding.linear_1.weight")[1]
    return config


def vae_config(shapes: Shapes, family: str) -> VAEConfig:
    need = lambda key: _need(shapes, key, "vae")  # noqa: E731
    levels = len(_indices(shapes, r"encoder\.down_blocks\.(\d+)\.resnets\.0\.conv1\.weight$"))
    layers = len(_indices(shapes, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.conv1\.weight$"))
    if levels == 0 or layers == 0:
        raise ConversionError("vae: no encoder resnets found; unknown architecture")
    return VAEConfig(
        in_channels=need("encoder.conv_in.weight")[1],
        out_channels=need("decoder.conv_out.weight")[0],
        latent_channels=need("decoder.conv_in.weight")[1],
        block_out_channels=tuple(need(f"encoder.down_blocks.{b}.resnets.0.conv1.weight")[0] for b in range(levels)),
        layers_per_block=layers,
        scaling_factor=VAE_USAGE[family].scaling_factor,
        force_upcast=VAE_USAGE[family].force_upcast,  # the SDXL VAE overflows in float16
        use_quant_conv="quant_conv.weight" in shapes,
        use_post_quant_conv="post_quant_conv.weight" in shapes,
        mid_block_add_attention="encoder.mid_block.attentions.0.to_q.weight" in shapes,
    )


def text_config(shapes: Shapes, openclip: bool, component: str, family: str) -> CLIPTextConfig:
    """A text encoder's config: widths and depth from shapes, hidden_layer, final_norm and pad from the family."""
    usage = TEXT_USAGE[(family, component)]
    need = lambda key: _need(shapes, key, component)  # noqa: E731
    vocab, width = need("text_model.embeddings.token_embedding.weight")
    layers = len(_indices(shapes, r"text_model\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.weight$"))
    if layers == 0:
        raise ConversionError(f"{component}: no transformer layers found; unknown architecture")
    projection = shapes.get("text_projection.weight")
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=need("text_model.encoder.layers.0.mlp.fc1.weight")[0],
        num_hidden_layers=layers,
        num_attention_heads=_heads(width, component),
        max_position_embeddings=need("text_model.embeddings.position_embedding.weight")[0],
        hidden_act="gelu" if openclip else "quick_gelu",
        projection_dim=projection[0] if projection else None,
        hidden_layer=usage.hidden_layer,
        final_norm=usage.final_norm,
        pad_token_id=usage.pad_token_id,
    )
