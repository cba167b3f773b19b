"""The UNet key table: original LDM / SGM names (`model.diffusion_model.*`) -> diffusers names
(docs/facts.md §2.5).

It lives in the engine, not the converter, because both use it: the converter to rename checkpoints and
mlx_sd.lora to resolve kohya LoRA names in LDM spelling (mlx_sd must not import convert).

Input blocks are numbered across levels: block N >= 1 is level (N-1) // (L+1), slot (N-1) % (L+1), where
L = layers_per_block; slot L holds only the downsampler. Output blocks: level N // (L+1), slot N % (L+1),
the upsampler being `.1.conv` or `.2.conv`. Transformer sub-names are the same in both formats.
"""

from __future__ import annotations

import re

PREFIX = "model.diffusion_model."

_FIXED = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_FIXED_RE = re.compile(r"(time_embed\.[02]|label_emb\.0\.[02]|input_blocks\.0\.0|out\.[02])\.(weight|bias)$")
_RESNET_RE = re.compile(r"(in_layers\.[02]|emb_layers\.1|out_layers\.[03]|skip_connection)\.(weight|bias)$")
_TRANSFORMER_RE = re.compile(r"(norm|proj_in|proj_out|transformer_blocks\.\d+\.[\w.]+)\.(weight|bias)$")
_BLOCK_RE = re.compile(r"(input_blocks|output_blocks|middle_block)\.(?:(\d+)\.)?(\d)\.(.+)$")


def _resnet(rest: str) -> str | None:
    match = _RESNET_RE.match(rest)
    return f"{_RESNET[match.group(1)]}.{match.group(2)}" if match else None


def _transformer(rest: str) -> str | None:
    return rest if _TRANSFORMER_RE.match(rest) else None


def unet_key(key: str, layers_per_block: int) -> str | None:
    """A UNet key without PREFIX -> its diffusers name, or None if the table does not know it."""
    fixed = _FIXED_RE.match(key)
    if fixed:
        return f"{_FIXED[fixed.group(1)]}.{fixed.group(2)}"
    block = _BLOCK_RE.match(key)
    if not block:
        return None
    kind, number, part, rest = block.group(1), block.group(2), int(block.group(3)), block.group(4)
    slots = layers_per_block + 1
    if kind == "middle_block":
        if number is not None:
            return None
        inner = _transformer(rest) if part == 1 else _resnet(rest)
        owner = "mid_block.attentions.0" if part == 1 else f"mid_block.resnets.{part // 2}"
        return f"{owner}.{inner}" if inner and part in (0, 1, 2) else None
    if number is None:
        return None
    n = int(number)
    if kind == "input_blocks":
        if n == 0:
            return None
        level, slot = divmod(n - 1, slots)
        if part == 0 and rest.startswith("op."):
            inner, owner = rest[len("op."):], f"down_blocks.{level}.downsamplers.0.conv"
            return f"{owner}.{inner}" if inner in ("weight", "bias") else None
        owner = f"down_blocks.{level}.{'resnets' if part == 0 else 'attentions'}.{slot}"
    else:
        level, slot = divmod(n, slots)
        if part in (1, 2) and rest.startswith("conv."):
            inner, owner = rest[len("conv."):], f"up_blocks.{level}.upsamplers.0.conv"
            return f"{owner}.{inner}" if inner in ("weight", "bias") else None
        owner = f"up_blocks.{level}.{'resnets' if part == 0 else 'attentions'}.{slot}"
    if part > 1:
        return None
    inner = _resnet(rest) if part == 0 else _transformer(rest)
    return f"{owner}.{inner}" if inner else None
