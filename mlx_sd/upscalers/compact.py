"""SRVGGNetCompact, Real-ESRGAN's small network (realesr-general-x4v3, realesr-animevideov3): a plain
stack of convolutions with per-channel PReLUs at the input's resolution, a pixel shuffle to the output
size, and the nearest-upsampled input added, so the network only learns the residual. NHWC, [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .pixels import nearest_upsample, pixel_shuffle


@dataclass(frozen=True)
class CompactConfig:
    in_channels: int = 3
    out_channels: int = 3
    features: int = 64
    convs: int = 16  # body convolutions between the first and the last
    scale: int = 4


class SRVGGNetCompact(nn.Module):
    def __init__(self, config: CompactConfig):
        super().__init__()
        self.config = config
        nf = config.features
        # convolutions and PReLUs alternate in one list, so the names match the released files' body.N
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, nf, 3, padding=1), nn.PReLU(nf)]
        for _ in range(config.convs):
            layers += [nn.Conv2d(nf, nf, 3, padding=1), nn.PReLU(nf)]
        layers.append(nn.Conv2d(nf, config.out_channels * config.scale**2, 3, padding=1))
        self.body = layers

    def __call__(self, x: mx.array) -> mx.array:
        out = x
        for layer in self.body:
            out = layer(out)
        return pixel_shuffle(out, self.config.scale) + nearest_upsample(x, self.config.scale)
