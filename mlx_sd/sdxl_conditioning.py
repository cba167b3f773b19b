"""SDXL micro-conditioning: the size/crop (and, for the refiner, aesthetic score) "time ids"
(docs/facts.md §1.3).

Base:    [orig_h, orig_w, crop_top, crop_left, target_h, target_w]
Refiner: [orig_h, orig_w, crop_top, crop_left, aesthetic_score]

As diffusers and A1111 do by default, original = target = the requested (height, width) and the crop is
(0, 0). The UNet embeds each number with a 256-wide sinusoid itself; this module only builds the ids.
"""

from __future__ import annotations

import mlx.core as mx

from .config import ModelConfig


def needs_time_ids(config: ModelConfig) -> bool:
    return config.unet.addition_embed_type == "text_time"


def time_ids(config: ModelConfig, height: int, width: int, aesthetic_score: float, batch: int) -> mx.array:
    """(batch, 6) for SDXL base, (batch, 5) for the refiner; float32."""
    crop_top, crop_left = 0, 0
    if config.requires_aesthetics_score:
        row = [height, width, crop_top, crop_left, aesthetic_score]
    else:
        row = [height, width, crop_top, crop_left, height, width]
    return mx.broadcast_to(mx.array([row], dtype=mx.float32), (batch, len(row)))
