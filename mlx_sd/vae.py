"""AutoencoderKL: the VAE shared by SD1, SD2 and SDXL (docs/facts.md §1.5).

Channels-last (NHWC) activations, MLX-layout weights, diffusers' parameter names
(`encoder.down_blocks.0.resnets.0.conv1`, `decoder.mid_block.attentions.0.to_q`, ...).
Scaling latents by `scaling_factor` is the pipeline's job, not this module's.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .config import VAEConfig
from .layers import DotProductAttention, GroupNorm, GroupNormSiLU, Upsample2D

EPS = 1e-6  # every GroupNorm in the VAE


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus a (1x1-projected when the width changes) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = GroupNormSiLU(groups, in_channels, EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNormSiLU(groups, out_channels, EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def __call__(self, x: mx.array) -> mx.array:
        h = self.conv1(self.norm1(x))
        h = self.conv2(self.norm2(h))
        shortcut = self.conv_shortcut(x) if "conv_shortcut" in self else x
        return shortcut + h


class MidAttention(nn.Module):
    """Single-head self-attention over all H*W positions, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = GroupNorm(groups, channels, EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        # diffusers computes this softmax in float32 (upcast_softmax) whatever the weights' dtype
        self.attention = DotProductAttention(heads=1, upcast=True)
        self.to_out = [nn.Linear(channels, channels)]

    def __call__(self, x: mx.array) -> mx.array:
        batch, height, width, channels = x.shape
        h = self.group_norm(x).reshape(batch, height * width, channels)
        h = self.attention(self.to_q(h), self.to_k(h), self.to_v(h))
        return x + self.to_out[0](h).reshape(batch, height, width, channels)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        self.resnets = [ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)]
        if add_attention:
            self.attentions = [MidAttention(channels, groups)]

    def __call__(self, x: mx.array) -> mx.array:
        x = self.resnets[0](x)
        if "attentions" in self:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def __call__(self, x: mx.array) -> mx.array:
        # asymmetric: one row of zeros at the bottom, one column at the right
        return self.conv(mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)]))


class EncoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = [
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(layers)
        ]
        if downsample:
            self.downsamplers = [Downsample(out_channels)]

    def __call__(self, x: mx.array) -> mx.array:
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsamplers[0](x) if "downsamplers" in self else x


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = [
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(layers)
        ]
        if upsample:
            self.upsamplers = [Upsample2D(out_channels)]

    def __call__(self, x: mx.array) -> mx.array:
        for resnet in self.resnets:
            x = resnet(x)
        return self.upsamplers[0](x) if "upsamplers" in self else x


class Encoder(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        widths, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.down_blocks = [
            EncoderBlock(
                widths[max(i - 1, 0)], width, config.layers_per_block, groups, downsample=i < len(widths) - 1
            )
            for i, width in enumerate(widths)
        ]
        self.mid_block = MidBlock(widths[-1], groups, config.mid_block_add_attention)
        self.conv_norm_out = GroupNormSiLU(groups, widths[-1], EPS)
        self.conv_out = nn.Conv2d(widths[-1], 2 * config.latent_channels, 3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_norm_out(x))


class Decoder(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        widths, groups = tuple(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0], groups, config.mid_block_add_attention)
        # one resnet more per level than the encoder
        self.up_blocks = [
            DecoderBlock(
                widths[max(i - 1, 0)], width, config.layers_per_block + 1, groups, upsample=i < len(widths) - 1
            )
            for i, width in enumerate(widths)
        ]
        self.conv_norm_out = GroupNormSiLU(groups, widths[-1], EPS)
        self.conv_out = nn.Conv2d(widths[-1], config.out_channels, 3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.mid_block(self.conv_in(x))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_norm_out(x))


class AutoencoderKL(nn.Module):
    """Images (B, H, W, 3) in [-1, 1] <-> unscaled latents (B, H/f, W/f, 4), f = config.downscale."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        moments = 2 * config.latent_channels
        if config.use_quant_conv:
            self.quant_conv = nn.Conv2d(moments, moments, 1)
        if config.use_post_quant_conv:
            self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)

    @property
    def dtype(self) -> mx.Dtype:
        return self.encoder.conv_in.weight.dtype

    def _check_input(self, x: mx.array, channels: int, what: str, multiple: int) -> None:
        if x.ndim != 4 or x.shape[-1] != channels or x.shape[1] % multiple or x.shape[2] % multiple:
            raise ValueError(
                f"AutoencoderKL.{what} expects (B, H, W, {channels}) NHWC with H and W multiples of "
                f"{multiple}; received shape {tuple(x.shape)}"
            )

    def encode(self, images: mx.array) -> mx.array:
        """(B, H, W, 3) -> moments (B, H/f, W/f, 2 * latent_channels): mean, then log-variance."""
        self._check_input(images, self.config.in_channels, "encode", self.config.downscale)
        moments = self.encoder(images.astype(self.dtype))
        return self.quant_conv(moments) if "quant_conv" in self else moments

    def decode(self, latents: mx.array) -> mx.array:
        """Unscaled latents (B, h, w, latent_channels) -> images (B, f*h, f*w, 3), roughly in [-1, 1]."""
        self._check_input(latents, self.config.latent_channels, "decode", 1)
        latents = latents.astype(self.dtype)
        if "post_quant_conv" in self:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)
