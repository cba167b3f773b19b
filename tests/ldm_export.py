"""Write diffusers / transformers weights back into original single-file layouts (LDM for SD1/SD2, SGM for
SDXL and the refiner): the reverse of the converter's mapping (docs/facts.md §2.2, §2.5, §2.6, §2.7).

Test-only code. It lets the tests make realistic single-file checkpoints from tiny random pipelines and then
check them with diffusers' own single-file loader, independently of our converter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

Tensors = dict[str, torch.Tensor]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
REFINER_OPENCLIP_PREFIX = "conditioner.embedders.0.model."


# ---------------------------------------------------------------------------------------------
# UNet (docs/facts.md §2.5)

_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


@dataclass(frozen=True)
class UNetLayout:
    """What the UNet key mapping needs to know beyond the key names."""

    layers_per_block: int
    up_levels_with_attention: frozenset[int]  # diffusers up_blocks indices that have attentions


def unet_layout(config: dict) -> UNetLayout:
    up_attn = frozenset(i for i, kind in enumerate(config["up_block_types"]) if kind.startswith("CrossAttn"))
    return UNetLayout(config["layers_per_block"], up_attn)


def _resnet_rest(rest: str) -> str:
    name, _, tail = rest.partition(".")
    return f"{_RESNET_NAMES[name]}.{tail}"


def unet_key_to_ldm(key: str, layout: UNetLayout) -> str:
    """A diffusers UNet2DConditionModel key -> its LDM/SGM key (without `model.diffusion_model.`)."""
    per_level = layout.layers_per_block + 1
    for name, ldm in _UNET_FIXED.items():
        if key.startswith(name + "."):
            return ldm + key[len(name):]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        level, kind, slot, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = 1 + level * per_level + slot
        if kind == "resnets":
            return f"input_blocks.{block}.0.{_resnet_rest(rest)}"
        return f"input_blocks.{block}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        block = 1 + int(m[1]) * per_level + layout.layers_per_block
        return f"input_blocks.{block}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, index, rest = m[1], int(m[2]), m[3]
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * index}.{_resnet_rest(rest)}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        level, kind, slot, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = level * per_level + slot
        if kind == "resnets":
            return f"output_blocks.{block}.0.{_resnet_rest(rest)}"
        return f"output_blocks.{block}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        level = int(m[1])
        block = level * per_level + layout.layers_per_block
        # the upsampler follows the resnet and, on levels with attention, the transformer
        index = 2 if level in layout.up_levels_with_attention else 1
        return f"output_blocks.{block}.{index}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def unet_to_ldm(state: Tensors, config: dict) -> Tensors:
    layout = unet_layout(config)
    return {UNET_PREFIX + unet_key_to_ldm(k, layout): v for k, v in state.items()}


def ema_key(ldm_unet_key: str) -> str:
    """`model.diffusion_model.a.b.c` -> `model_ema.diffusion_modelabc` (LDM's EMA buffer naming)."""
    return "model_ema." + "".join(ldm_unet_key.split(".")[1:])


# ---------------------------------------------------------------------------------------------
# VAE (docs/facts.md §2.6)

_VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_key_to_ldm(key: str, levels: int) -> str:
    """A diffusers AutoencoderKL key -> its LDM key (without `first_stage_model.`)."""
    key = key.replace("conv_shortcut", "nin_shortcut")
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
        return f"{m[1]}.norm_out.{m[2]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    # LDM stores decoder levels by resolution, diffusers by execution order
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION_NAMES[m[2]]}.{m[3]}"
    if re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\..+|(post_)?quant_conv\..+", key):
        return key
    raise KeyError(f"no LDM name for VAE key {key!r}")


def vae_to_ldm(state: Tensors, config: dict) -> Tensors:
    levels = len(config["block_out_channels"])
    out = {}
    for key, value in state.items():
        ldm = vae_key_to_ldm(key, levels)
        if ".mid.attn_1." in ldm and ldm.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convs
        out[VAE_PREFIX + ldm] = value
    return out


# ---------------------------------------------------------------------------------------------
# Text encoders (docs/facts.md §2.7)


def clip_to_ldm(state: Tensors, prefix: str, max_positions: int) -> Tensors:
    """OpenAI CLIP as LDM/SGM store it: the HF names under `prefix`, plus the `position_ids` buffer."""
    out = {prefix + k: v for k, v in state.items() if not k.startswith("text_projection.")}
    out[prefix + "text_model.embeddings.position_ids"] = torch.arange(max_positions, dtype=torch.int64)[None]
    return out


_OPENCLIP_LAYER_NAMES = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def openclip_from_hf(state: Tensors) -> Tensors:
    """HF CLIP text names -> OpenCLIP names (fused q/k/v, `text_projection` stored as x @ P)."""
    out: Tensors = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key.rsplit(".", 1)[1]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = value
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            out[f"transformer.resblocks.{m[1]}.{_OPENCLIP_LAYER_NAMES[m[2]]}.{m[3]}"] = value
        else:
            raise KeyError(f"no OpenCLIP name for text-encoder key {key!r}")
    for (layer, kind), parts in qkv.items():
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def extra_openclip_block(state: Tensors, generator: torch.Generator) -> Tensors:
    """One more random OpenCLIP resblock after the last one, as real SD2 files carry (diffusers drops it)."""
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks.")})
    last, new = layers[-1], layers[-1] + 1
    out = {}
    for key, value in state.items():
        if key.startswith(f"transformer.resblocks.{last}."):
            rest = key.split(".", 3)[3]
            fan_in = value.shape[-1] if value.ndim == 2 else 1
            if rest.startswith("ln_") and rest.endswith("weight"):
                fresh = 1 + 0.1 * torch.randn(value.shape, generator=generator)
            elif value.ndim == 2:
                fresh = torch.randn(value.shape, generator=generator) / math.sqrt(fan_in)
            else:
                fresh = 0.1 * torch.randn(value.shape, generator=generator)
            out[f"transformer.resblocks.{new}.{rest}"] = fresh.to(value.dtype)
    return out


def openclip_to_ldm(state: Tensors, prefix: str) -> Tensors:
    return {prefix + k: v for k, v in state.items()}


# ---------------------------------------------------------------------------------------------
# Junk that real files carry and loaders must ignore


def ddpm_buffers(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensors:
    """The LatentDiffusion schedule buffers stored at the top level of LDM checkpoints (docs/facts.md §1.7)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    buffers = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
    }
    return {k: v.to(torch.float32) for k, v in buffers.items()}
