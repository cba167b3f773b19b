"""Upscaler models in MLX: the ESRGAN family (RRDBNet) and Real-ESRGAN's compact network
(SRVGGNetCompact), run tile by tile. Reading their files (`.pth`, `.safetensors`, any key layout)
is the converter's job: convert/upscaler_file.py."""

from __future__ import annotations

import mlx.nn as nn

from .compact import CompactConfig, SRVGGNetCompact
from .library import MODEL_SUFFIXES, UPSCALERS_DIR, library_upscalers, resolve_upscaler
from .resize import CLASSIC_FILTERS, MAX_UPSCALED_SIDE, upscale_image, upscaled_size
from .rrdbnet import RRDBNet, RRDBNetConfig
from .tiling import DEFAULT_OVERLAP, DEFAULT_TILE, upscale_array

UpscalerConfig = RRDBNetConfig | CompactConfig


def build_upscaler(config: UpscalerConfig) -> nn.Module:
    """The network a config describes, with freshly initialised weights."""
    return RRDBNet(config) if isinstance(config, RRDBNetConfig) else SRVGGNetCompact(config)


__all__ = [
    "CLASSIC_FILTERS", "CompactConfig", "DEFAULT_OVERLAP", "DEFAULT_TILE", "MAX_UPSCALED_SIDE", "MODEL_SUFFIXES",
    "RRDBNet", "RRDBNetConfig", "SRVGGNetCompact", "UPSCALERS_DIR", "UpscalerConfig", "build_upscaler",
    "library_upscalers", "resolve_upscaler", "upscale_array", "upscale_image", "upscaled_size",
]
