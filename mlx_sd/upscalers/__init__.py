"""Upscaler models in MLX: the ESRGAN family (RRDBNet) and Real-ESRGAN's compact network
(SRVGGNetCompact), run tile by tile. Reading their files (`.pth`, `.safetensors`, any key layout)
is the converter's job: convert/upscaler_file.py."""

from __future__ import annotations

import mlx.nn as nn

from .compact import CompactConfig, SRVGGNetCompact
from .rrdbnet import RRDBNet, RRDBNetConfig
from .tiling import DEFAULT_OVERLAP, DEFAULT_TILE, upscale_array

UpscalerConfig = RRDBNetConfig | CompactConfig


def build_upscaler(config: UpscalerConfig) -> nn.Module:
    """The network a config describes, with freshly initialised weights."""
    return RRDBNet(config) if isinstance(config, RRDBNetConfig) else SRVGGNetCompact(config)


__all__ = [
    "CompactConfig", "DEFAULT_OVERLAP", "DEFAULT_TILE", "RRDBNet", "RRDBNetConfig", "SRVGGNetCompact",
    "UpscalerConfig", "build_upscaler", "upscale_array",
]
