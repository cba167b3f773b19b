"""RRDBNet, the ESRGAN generator: a trunk of residual-in-residual dense blocks at the input's
resolution, then nearest-neighbour 2x upsampling steps each followed by a convolution.

One network covers every ESRGAN-family file users download: ESRGAN's original models, Real-ESRGAN
x4plus, its 6-block anime model, 4x-UltraSharp and Remacri (trained with the same network), and
Real-ESRGAN x2plus, which pixel-unshuffles its input first so the same 4x trunk gives a 2x result.
Images are NHWC, values in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .pixels import nearest_upsample, pixel_unshuffle, reflect_pad_to_multiple

RESIDUAL_SCALE = 0.2  # each dense block adds a fifth of its output, as the network was trained
NEGATIVE_SLOPE = 0.2


@dataclass(frozen=True)
class RRDBNetConfig:
    in_channels: int = 3
    out_channels: int = 3
    features: int = 64
    blocks: int = 23
    growth: int = 32  # channels each dense-block convolution adds
    upsamplings: int = 2  # 2x nearest steps in the network
    unshuffle: int = 1  # pixel-unshuffle factor of the input (x2plus: 2)

    @property
    def scale(self) -> int:
        """How many times larger the output is than the input."""
        return 2**self.upsamplings // self.unshuffle


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class DenseBlock(nn.Module):
    """Five convolutions, each seeing the block's input and every earlier convolution's output."""

    def __init__(self, features: int, growth: int):
        super().__init__()
        self.conv1 = _conv(features, growth)
        self.conv2 = _conv(features + growth, growth)
        self.conv3 = _conv(features + 2 * growth, growth)
        self.conv4 = _conv(features + 3 * growth, growth)
        self.conv5 = _conv(features + 4 * growth, features)

    def __call__(self, x: mx.array) -> mx.array:
        seen = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            seen.append(nn.leaky_relu(conv(mx.concatenate(seen, axis=-1)), NEGATIVE_SLOPE))
        return self.conv5(mx.concatenate(seen, axis=-1)) * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Three dense blocks with a scaled residual around them."""

    def __init__(self, features: int, growth: int):
        super().__init__()
        self.rdb1 = DenseBlock(features, growth)
        self.rdb2 = DenseBlock(features, growth)
        self.rdb3 = DenseBlock(features, growth)

    def __call__(self, x: mx.array) -> mx.array:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
    def __init__(self, config: RRDBNetConfig):
        super().__init__()
        self.config = config
        nf = config.features
        self.conv_first = _conv(config.in_channels * config.unshuffle**2, nf)
        self.body = [RRDB(nf, config.growth) for _ in range(config.blocks)]
        self.conv_body = _conv(nf, nf)
        self.upconvs = [_conv(nf, nf) for _ in range(config.upsamplings)]
        self.conv_hr = _conv(nf, nf)
        self.conv_last = _conv(nf, config.out_channels)

    def __call__(self, x: mx.array) -> mx.array:
        height, width = x.shape[1:3]
        if self.config.unshuffle > 1:
            x = pixel_unshuffle(reflect_pad_to_multiple(x, self.config.unshuffle), self.config.unshuffle)
        # trunk
        feat = self.conv_first(x)
        trunk = feat
        for block in self.body:
            trunk = block(trunk)
        feat = feat + self.conv_body(trunk)
        # upsampling
        for conv in self.upconvs:
            feat = nn.leaky_relu(conv(nearest_upsample(feat, 2)), NEGATIVE_SLOPE)
        out = self.conv_last(nn.leaky_relu(self.conv_hr(feat), NEGATIVE_SLOPE))
        # the padding added for the unshuffle is cut off again
        return out[:, : height * self.config.scale, : width * self.config.scale]
