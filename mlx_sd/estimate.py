"""What a request will take before it starts: peak memory and a rough time, from the model's shapes.

The memory estimate is the resident weights plus the larger of the UNet's and the VAE's working
sets. With block-by-block evaluation (mlx_sd.block_evaluation) the UNet holds its skip connections
and one block's intermediates, and attention never more than a block of scores; the VAE decodes an
image (or a tile) at a time and holds a few full-resolution activations of its widest top level.
The factors below are those working sets in activations of the level's size, rounded up from MLX's
peak on SD1.5 and the demo model (docs/performance.md). The time is the UNet's multiply-adds over a
nominal rate: an order of magnitude, for "minutes or hours", not a forecast.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig
from .request import GenerationRequest

FLOAT32 = 4
UNET_BLOCK_ACTIVATIONS = 8  # a resnet's or transformer block's intermediates, in activations of its level
VAE_ACTIVATIONS = 10  # the decoder's working set at full resolution, in activations of its top level
ATTENTION_SCORE_BYTES = 64 << 20  # at most one block of queries' scores (block_evaluation)
NOMINAL_FLOPS = {"cpu": 100e9, "gpu": 10e12}  # per CPU thread, per GPU
CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")


@dataclass(frozen=True)
class Estimate:
    weights_bytes: int
    unet_bytes: int  # working set of one UNet call (CFG's two halves at once)
    vae_bytes: int  # working set of one image's decode (or one tile's)
    seconds: float  # rough: the UNet's steps at a nominal rate

    @property
    def peak_bytes(self) -> int:
        return self.weights_bytes + max(self.unet_bytes, self.vae_bytes)


class TooLargeError(ValueError):
    """A request whose estimated memory exceeds the machine's; the message says what to change, and
    the fields say it to a caller that asks the user instead (the app)."""

    def __init__(self, message: str, needed: int, available: int, advice: list[str]):
        super().__init__(message)
        self.needed, self.available, self.advice = needed, available, advice


def machine_memory() -> int:
    """Bytes of memory this process can have: the physical memory, or a cgroup's lower limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = CGROUP_LIMIT.read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if re.fullmatch(r"\d+", limit) else total


def _unet_bytes(config: ModelConfig, request: GenerationRequest) -> int:
    unet, factor = config.unet, config.vae.downscale
    rows = request.batch_size * (2 if request.cfg_scale > 1 else 1)
    height, width = request.height // factor, request.width // factor
    skips, widest = 0, 0
    for level, channels in enumerate(unet.block_out_channels):
        pixels = -(-height // 2**level) * -(-width // 2**level)
        activation = rows * pixels * channels * FLOAT32
        skips += (unet.layers_per_block + 1) * activation
        widest = max(widest, activation * (4 if unet.down_block_types[level] == "CrossAttnDownBlock2D" else 1))
    return skips + UNET_BLOCK_ACTIVATIONS * widest + ATTENTION_SCORE_BYTES


def _vae_bytes(config: ModelConfig, request: GenerationRequest) -> int:
    vae = config.vae
    tiled = max(request.width, request.height) > vae.sample_size if request.vae_tiling is None else request.vae_tiling
    height, width = (vae.sample_size, vae.sample_size) if tiled else (request.height, request.width)
    image = request.height * request.width * 3 * FLOAT32 * 2  # the output and its blended copy
    return VAE_ACTIVATIONS * height * width * vae.block_out_channels[0] * FLOAT32 + image


def _unet_flops(config: ModelConfig, request: GenerationRequest, parameters_per_level: list[int]) -> float:
    unet, factor = config.unet, config.vae.downscale
    rows = request.batch_size * (2 if request.cfg_scale > 1 else 1)
    height, width = request.height // factor, request.width // factor
    flops = 0.0
    for level, (channels, parameters) in enumerate(zip(unet.block_out_channels, parameters_per_level)):
        pixels = -(-height // 2**level) * -(-width // 2**level)
        flops += 2 * parameters * pixels
        if unet.down_block_types[level] == "CrossAttnDownBlock2D":  # self-attention: q k^T and weights v
            depth = unet.transformer_depth_per_level()[level] * (2 * unet.layers_per_block + 1)
            flops += depth * 4 * pixels * pixels * channels
    return rows * flops


def estimate(
    config: ModelConfig, request: GenerationRequest, weights_bytes: int, parameters_per_level: list[int],
    device: str, threads: int = 1,
) -> Estimate:
    """The estimate for `request` on a model whose loaded weights take `weights_bytes` and whose UNet
    has `parameters_per_level` conv and linear weights at each level (Pipeline.estimate gives both)."""
    rate = NOMINAL_FLOPS[device] * (threads if device == "cpu" else 1)
    steps = request.steps * request.batch_count
    seconds = steps * _unet_flops(config, request, parameters_per_level) / rate
    return Estimate(weights_bytes, _unet_bytes(config, request), _vae_bytes(config, request), seconds)


def check_fits(config: ModelConfig, request: GenerationRequest, found: Estimate, available: int) -> None:
    """Raise TooLargeError, saying what to change, when `found` needs more than `available` bytes."""
    if found.peak_bytes <= available:
        return
    advice = []
    if found.vae_bytes > found.unet_bytes and not request.vae_tiling:
        advice.append("turn on the tiled VAE")
    if not request.low_memory:
        advice.append("use low-memory mode")
    advice.append("use a smaller size or batch")
    raise TooLargeError(
        f"{request.width}x{request.height} with a batch of {request.batch_size} needs about "
        f"{found.peak_bytes / 2**30:.1f} GB (weights {found.weights_bytes / 2**30:.1f} GB, UNet "
        f"{found.unet_bytes / 2**30:.1f} GB, VAE decode {found.vae_bytes / 2**30:.1f} GB) and this machine has "
        f"{available / 2**30:.1f} GB: " + ", or ".join(advice),
        found.peak_bytes, available, advice,
    )
