"""The denoising UNet of SD1, SD2, SDXL and the SDXL refiner (docs/facts.md §1.1, §1.2, §1.3).

Activations are NHWC. Parameter names are diffusers' UNet2DConditionModel state-dict keys, so the
module tree mirrors diffusers' (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`, ...).
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from .config import UNetConfig
from .layers import DotProductAttention, GroupNorm, GroupNormSiLU, Upsample2D

TRANSFORMER_NORM_EPS = 1e-6  # Transformer2D's GroupNorm; resnets use config.norm_eps
DOWN_BLOCK_TYPES = ("DownBlock2D", "CrossAttnDownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "CrossAttnUpBlock2D")


def timestep_embedding(
    timesteps: mx.array, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0
) -> mx.array:
    """Sinusoidal embedding (N,) -> (N, dim) in float32; timesteps may be fractional."""
    half = dim // 2
    exponent = -math.log(10000) * mx.arange(half, dtype=mx.float32) / (half - freq_shift)
    args = timesteps.astype(mx.float32)[:, None] * mx.exp(exponent)[None, :]
    halves = [mx.cos(args), mx.sin(args)] if flip_sin_to_cos else [mx.sin(args), mx.cos(args)]
    return mx.concatenate(halves, axis=-1)


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear (`time_embedding`, and SDXL's `add_embedding`)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_2(nn.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = GroupNormSiLU(groups, in_channels, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = GroupNormSiLU(groups, out_channels, eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def __call__(self, x: mx.array, temb: mx.array) -> mx.array:
        h = self.conv1(self.norm1(x))
        h = h + self.time_emb_proj(nn.silu(temb))[:, None, None, :]
        h = self.conv2(self.norm2(h))
        shortcut = self.conv_shortcut(x) if "conv_shortcut" in self else x
        return shortcut + h


class Attention(nn.Module):
    """Multi-head attention with diffusers' names: q/k/v without bias, `to_out.0` with bias."""

    def __init__(self, dim: int, context_dim: int, heads: int, upcast: bool):
        super().__init__()
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.attention = DotProductAttention(heads, upcast)
        self.to_out = [nn.Linear(dim, dim)]

    def __call__(self, x: mx.array, context: mx.array | None = None) -> mx.array:
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        return self.to_out[0](self.attention(q, k, v))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def __call__(self, x: mx.array) -> mx.array:
        value, gate = mx.split(self.proj(x), 2, axis=-1)
        return value * nn.gelu(gate)  # exact (erf) GELU


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        # net.1 is diffusers' dropout; the identity keeps the output Linear at `net.2`.
        self.net = [GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)]

    def __call__(self, x: mx.array) -> mx.array:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, upcast: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, dim, heads, upcast)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads, upcast)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def __call__(self, x: mx.array, context: mx.array) -> mx.array:
        # self-attention
        x = x + self.attn1(self.norm1(x))
        # cross-attention on the text context
        x = x + self.attn2(self.norm2(x), context)
        # feed-forward
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """GroupNorm -> proj_in -> transformer blocks over H*W tokens -> proj_out, plus the input."""

    def __init__(self, config: UNetConfig, channels: int, heads: int, depth: int, context_dim: int):
        super().__init__()
        self.norm = GroupNorm(config.norm_num_groups, channels, TRANSFORMER_NORM_EPS)
        # SD1 projects with 1x1 convs, SD2/SDXL with Linears; on NHWC both act on the last axis.
        if config.use_linear_projection:
            self.proj_in = nn.Linear(channels, channels)
            self.proj_out = nn.Linear(channels, channels)
        else:
            self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
            self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = [
            BasicTransformerBlock(channels, context_dim, heads, config.upcast_attention) for _ in range(depth)
        ]

    def __call__(self, x: mx.array, context: mx.array) -> mx.array:
        batch, height, width, channels = x.shape
        h = self.proj_in(self.norm(x)).reshape(batch, height * width, channels)
        for block in self.transformer_blocks:
            h = block(h, context)
        return self.proj_out(h.reshape(batch, height, width, channels)) + x


class Downsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(x)


def _transformers(config: UNetConfig, channels: int, heads: int, depth: int, context_dim: int, count: int):
    return [Transformer2DModel(config, channels, heads, depth, context_dim) for _ in range(count)]


class DownBlock(nn.Module):
    """diffusers' DownBlock2D / CrossAttnDownBlock2D (with `attentions`) for one level."""

    def __init__(self, config: UNetConfig, level: int, in_channels: int):
        super().__init__()
        out = config.block_out_channels[level]
        groups, eps, temb = config.norm_num_groups, config.norm_eps, config.time_embed_dim
        layers = config.layers_per_block
        self.resnets = [
            ResnetBlock2D(in_channels if i == 0 else out, out, temb, groups, eps) for i in range(layers)
        ]
        self.attentions = []
        if config.down_block_types[level] == "CrossAttnDownBlock2D":
            self.attentions = _transformers(
                config, out, config.heads_per_level()[level], config.transformer_depth_per_level()[level],
                config.cross_attention_dim_per_level()[level], layers,
            )
        self.downsamplers = [Downsample2D(out)] if level < config.levels - 1 else []

    def __call__(self, x: mx.array, temb: mx.array, context: mx.array) -> tuple[mx.array, list[mx.array]]:
        """Returns the block's output and the states it leaves for the skip connections."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """diffusers' UNetMidBlock2DCrossAttn: resnet -> transformer -> resnet at the deepest level."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        channels = config.block_out_channels[-1]
        groups, eps, temb = config.norm_num_groups, config.norm_eps, config.time_embed_dim
        self.resnets = [ResnetBlock2D(channels, channels, temb, groups, eps) for _ in range(2)]
        self.attentions = _transformers(
            config, channels, config.heads_per_level()[-1], config.transformer_depth_per_level()[-1],
            config.cross_attention_dim_per_level()[-1], 1,
        )

    def __call__(self, x: mx.array, temb: mx.array, context: mx.array) -> mx.array:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class UpBlock(nn.Module):
    """diffusers' UpBlock2D / CrossAttnUpBlock2D; up block i works at level `levels - 1 - i`."""

    def __init__(self, config: UNetConfig, index: int, prev_channels: int):
        super().__init__()
        level = config.levels - 1 - index
        out = config.block_out_channels[level]
        # The last resnet's skip is the previous level's downsampler output (or conv_in's).
        skip_in = config.block_out_channels[max(level - 1, 0)]
        groups, eps, temb = config.norm_num_groups, config.norm_eps, config.time_embed_dim
        layers = config.layers_per_block + 1
        self.resnets = []
        for i in range(layers):
            res_in = prev_channels if i == 0 else out
            res_skip = skip_in if i == layers - 1 else out
            self.resnets.append(ResnetBlock2D(res_in + res_skip, out, temb, groups, eps))
        self.attentions = []
        if config.up_block_types[index] == "CrossAttnUpBlock2D":
            self.attentions = _transformers(
                config, out, config.heads_per_level()[level], config.transformer_depth_per_level()[level],
                config.cross_attention_dim_per_level()[level], layers,
            )
        self.upsamplers = [Upsample2D(out)] if level > 0 else []

    def __call__(
        self,
        x: mx.array,
        temb: mx.array,
        context: mx.array,
        skips: list[mx.array],
        upsample_size: tuple[int, int] | None,
    ) -> mx.array:
        """`skips` are this block's skip states in push order (consumed last first)."""
        for i, (resnet, skip) in enumerate(zip(self.resnets, reversed(skips))):
            x = resnet(mx.concatenate([x, skip], axis=-1), temb)
            if self.attentions:
                x = self.attentions[i](x, context)
        if self.upsamplers:
            # cropped to the skip connection's size: for an odd side n (downsampled to ceil(n/2))
            # this equals torch's nearest interpolation to size n, as diffusers does
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNet2DConditionModel(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        _check_config(config)
        self.config = config
        channels = config.block_out_channels
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], config.time_embed_dim)
        if config.addition_embed_type == "text_time":
            self.add_embedding = TimestepEmbedding(
                config.projection_class_embeddings_input_dim, config.time_embed_dim
            )
        self.down_blocks = []
        for level in range(config.levels):
            in_channels = channels[max(level - 1, 0)]
            self.down_blocks.append(DownBlock(config, level, in_channels))
        self.mid_block = MidBlock(config)
        self.up_blocks = []
        for index in range(config.levels):
            prev_channels = channels[config.levels - index] if index > 0 else channels[-1]
            self.up_blocks.append(UpBlock(config, index, prev_channels))
        self.conv_norm_out = GroupNormSiLU(config.norm_num_groups, channels[0], config.norm_eps)
        self.conv_out = nn.Conv2d(channels[0], config.out_channels, kernel_size=3, padding=1)

    def __call__(
        self,
        sample: mx.array,
        timestep: mx.array,
        encoder_hidden_states: mx.array,
        text_embeds: mx.array | None = None,
        time_ids: mx.array | None = None,
    ) -> mx.array:
        """(B, h, w, in_channels) NHWC latents -> (B, h, w, out_channels) model output."""
        timestep = self._check_inputs(sample, timestep, encoder_hidden_states, text_embeds, time_ids)
        context = encoder_hidden_states
        config = self.config
        dtype = sample.dtype

        # time embedding
        temb = self.time_embedding(
            timestep_embedding(
                timestep, config.block_out_channels[0], config.flip_sin_to_cos, config.freq_shift
            ).astype(dtype)
        )

        # SDXL: pooled text embedding and the embedded size/crop (/aesthetic) ids, added to temb
        if "add_embedding" in self:
            time_embeds = timestep_embedding(
                time_ids.reshape(-1), config.addition_time_embed_dim,
                config.flip_sin_to_cos, config.freq_shift,
            ).reshape(sample.shape[0], -1)
            add_embeds = mx.concatenate([text_embeds.astype(dtype), time_embeds.astype(dtype)], axis=-1)
            temb = temb + self.add_embedding(add_embeds)

        # down path: conv_in's output and every block's states are kept for the skip connections
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context)
            skips.extend(block_skips)

        # middle
        x = self.mid_block(x, temb, context)

        # up path: each block takes its skips from the top of the stack and upsamples to the size
        # of the next skip (latent sides not divisible by the total downsampling stay exact)
        for block in self.up_blocks:
            count = len(block.resnets)
            block_skips, skips = skips[-count:], skips[:-count]
            upsample_size = tuple(skips[-1].shape[1:3]) if block.upsamplers else None
            x = block(x, temb, context, block_skips, upsample_size)

        # output
        return self.conv_out(self.conv_norm_out(x))

    def _check_inputs(
        self,
        sample: mx.array,
        timestep: mx.array,
        context: mx.array,
        text_embeds: mx.array | None,
        time_ids: mx.array | None,
    ) -> mx.array:
        """Validate the call's arguments; returns the timesteps broadcast to shape (B,)."""
        config = self.config
        if sample.ndim != 4 or sample.shape[-1] != config.in_channels:
            raise ValueError(
                f"sample must be NHWC (B, h, w, {config.in_channels}); received shape {tuple(sample.shape)}"
            )
        batch = sample.shape[0]
        timestep = mx.array(timestep)
        if timestep.ndim > 1 or (timestep.ndim == 1 and timestep.shape[0] not in (1, batch)):
            raise ValueError(
                f"timestep must have shape ({batch},) or be a scalar; received {tuple(timestep.shape)}"
            )
        if context.ndim != 3 or context.shape[0] != batch or context.shape[-1] != config.context_dim:
            raise ValueError(
                f"encoder_hidden_states must have shape ({batch}, L, {config.context_dim}); "
                f"received {tuple(context.shape)}"
            )
        if config.addition_embed_type != "text_time":
            if text_embeds is not None or time_ids is not None:
                raise ValueError(
                    "this UNet has no text_time conditioning: text_embeds and time_ids must be None"
                )
            return mx.broadcast_to(timestep, (batch,))
        if text_embeds is None or time_ids is None:
            raise ValueError("an SDXL UNet (text_time conditioning) needs text_embeds and time_ids")
        width = text_embeds.shape[-1] + time_ids.shape[-1] * config.addition_time_embed_dim
        if (
            text_embeds.ndim != 2 or time_ids.ndim != 2 or text_embeds.shape[0] != batch
            or time_ids.shape[0] != batch or width != config.projection_class_embeddings_input_dim
        ):
            raise ValueError(
                f"text_embeds (B, P) and time_ids (B, N) with B = {batch} and "
                f"P + N * {config.addition_time_embed_dim} = {config.projection_class_embeddings_input_dim} "
                f"were expected; received {tuple(text_embeds.shape)} and {tuple(time_ids.shape)}"
            )
        return mx.broadcast_to(timestep, (batch,))


def _check_config(config: UNetConfig) -> None:
    unknown = [t for t in config.down_block_types if t not in DOWN_BLOCK_TYPES]
    unknown += [t for t in config.up_block_types if t not in UP_BLOCK_TYPES]
    if unknown:
        raise ValueError(
            f"unsupported UNet block types {unknown}; "
            f"expected {DOWN_BLOCK_TYPES} (down) and {UP_BLOCK_TYPES} (up)"
        )
    if len(config.down_block_types) != config.levels or len(config.up_block_types) != config.levels:
        raise ValueError(
            f"{config.levels} block_out_channels need as many down and up block types; received "
            f"{len(config.down_block_types)} down and {len(config.up_block_types)} up"
        )
    if config.addition_embed_type not in (None, "text_time"):
        raise ValueError(
            f"addition_embed_type {config.addition_embed_type!r} is not supported; "
            "expected None or 'text_time'"
        )
    if config.addition_embed_type == "text_time" and (
        config.addition_time_embed_dim is None or config.projection_class_embeddings_input_dim is None
    ):
        raise ValueError(
            "text_time conditioning needs addition_time_embed_dim and projection_class_embeddings_input_dim"
        )
