"""The VAE key table: original LDM names (`first_stage_model.*`) -> diffusers AutoencoderKL names
(docs/facts.md §2.6), plus the repair of old diffusers attention names. Decoder levels are reversed: LDM
numbers them by resolution, diffusers by execution order."""

from __future__ import annotations

import re

PREFIX = "first_stage_model."

_SAME = ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out", "quant_conv", "post_quant_conv")
_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
# diffusers < 0.14 named the mid-block attention differently
_OLD_DIFFUSERS_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

_LEVEL_RE = re.compile(
    r"(encoder\.down|decoder\.up)\.(\d+)\.(block\.(\d+)\.(\w+)|downsample\.conv|upsample\.conv)\.(weight|bias)$"
)
_MID_RE = re.compile(r"(encoder|decoder)\.mid\.(block_1|block_2|attn_1)\.(\w+)\.(weight|bias)$")
_DIFFUSERS_ATTENTION_RE = re.compile(r"((?:en|de)coder\.mid_block\.attentions\.0)\.(\w+)\.(weight|bias)$")


def vae_key(key: str, levels: int) -> str | None:
    """An LDM VAE key without PREFIX -> its diffusers name, or None if the table does not know it."""
    for same in _SAME:
        if key in (f"{same}.weight", f"{same}.bias"):
            return key
    if key.startswith(("encoder.norm_out.", "decoder.norm_out.")):
        return key.replace(".norm_out.", ".conv_norm_out.")
    level = _LEVEL_RE.match(key)
    if level:
        side, index, what, resnet, inner, tail = level.groups()
        i = int(index)
        owner = f"encoder.down_blocks.{i}" if side == "encoder.down" else f"decoder.up_blocks.{levels - 1 - i}"
        if resnet is None:
            expected = "downsample.conv" if side == "encoder.down" else "upsample.conv"
            sampler = "downsamplers" if side == "encoder.down" else "upsamplers"
            return f"{owner}.{sampler}.0.conv.{tail}" if what == expected else None
        return f"{owner}.resnets.{resnet}.{_RESNET[inner]}.{tail}" if inner in _RESNET else None
    mid = _MID_RE.match(key)
    if mid:
        side, part, inner, tail = mid.groups()
        if part == "attn_1":
            return f"{side}.mid_block.attentions.0.{_ATTENTION[inner]}.{tail}" if inner in _ATTENTION else None
        if inner not in _RESNET:
            return None
        return f"{side}.mid_block.resnets.{0 if part == 'block_1' else 1}.{_RESNET[inner]}.{tail}"
    return None


def diffusers_vae_key(key: str) -> str:
    """A diffusers VAE key with the pre-0.14 attention names repaired."""
    match = _DIFFUSERS_ATTENTION_RE.match(key)
    if match and match.group(2) in _OLD_DIFFUSERS_ATTENTION:
        return f"{match.group(1)}.{_OLD_DIFFUSERS_ATTENTION[match.group(2)]}.{match.group(3)}"
    return key


def is_attention_projection(name: str) -> bool:
    """Mid-block q/k/v/out weights: Linear in diffusers and in our models, 1x1 convs in LDM files."""
    return ".mid_block.attentions.0.to_" in name and name.endswith(".weight")
