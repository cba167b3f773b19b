"""Hires fix as A1111 does it: a txt2img first pass, its result upscaled, then an img2img pass at the
larger size.

- Size (A1111's `calculate_target_resolution`): `hires_scale` S gives int(S * width) x int(S * height);
  `hires_width`/`hires_height` (either may be 0: from the other and the aspect ratio) give a size the
  upscale covers with the first pass's aspect ratio, and the latent is cropped to it around its centre.
  Sizes are floored to multiples of 8 pixels (one latent cell); A1111's latent upscalers do the same.
- Upscalers: the `Latent ...` modes interpolate the latents as torch's `F.interpolate` does with
  A1111's mode and antialias; `Lanczos`, `Nearest` and upscaler models resize the decoded picture,
  which the VAE encodes again (its posterior sampled with the image's second noise draw, as img2img's).
- Second pass: `hires_steps` (0: the first pass's) of `hires_sampler` ("": the same) with img2img's
  strength rule at `hires_denoise`; its noise is a fresh draw of each image's seed at the hires size
  (A1111 seeds a new generator per image), and its prompt editing follows A1111's hires rules
  (mlx_sd.prompt_schedule).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from PIL import Image

from .config import ModelConfig
from .image_prep import to_image
from .noise import ImageNoise
from .request import MAX_SIZE, MAX_STEPS, MIN_SIZE, GenerationRequest, RequestError
from .request import _check_text as check_text
from .samplers import SAMPLERS, SamplerInfo, sampler_by_name, sigmas_for
from .schedules import NoiseSchedule, img2img_sigmas
from .upscalers import CLASSIC_FILTERS, MAX_UPSCALED_SIDE, upscale_image
from .vae_codec import VAECodec

# A1111's latent upscale modes: torch interpolation mode and antialias
LATENT_UPSCALE_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
BICUBIC_A = -0.75  # torch's cubic convolution; its antialiased kernel uses PIL's -0.5
BICUBIC_AA_A = -0.5
# An upscaler model by name or file -> its network (the caller reads files: convert.upscaler_file)
UpscalerReader = Callable[[str], nn.Module]


def builtin_upscalers() -> list[str]:
    """The upscalers needing no model: the latent modes, then the classic filters (A1111's order)."""
    return [*LATENT_UPSCALE_MODES, *CLASSIC_FILTERS]


def upscaler_label(upscaler: str) -> str:
    """How `Hires upscaler` names it: a built-in as is, a model file by its name without folder and suffix."""
    canonical = _canonical_upscaler(upscaler)
    return canonical if canonical in builtin_upscalers() else Path(upscaler).stem


def hires_enabled(request: GenerationRequest) -> bool:
    return request.hires_scale != 0 or request.hires_width != 0 or request.hires_height != 0


# -- latent interpolation, as torch.nn.functional.interpolate (align_corners=False) ----------------


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0)).astype(np.float32)


def _antialiased(size_in: int, size_out: int, scale: np.float32, mode: str) -> np.ndarray:
    """torch's antialiased kernels (PIL's): a filter stretched by the downscale, weights normalised."""
    taps = 2 if mode == "bilinear" else 4
    support = taps * 0.5 * scale if scale >= 1 else taps * 0.5
    invscale = 1 / scale if scale >= 1 else np.float32(1)
    matrix = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        center = scale * np.float32(i + 0.5)
        low = max(int(center - support + 0.5), 0)
        high = min(int(center + support + 0.5), size_in)
        x = (np.arange(low, high, dtype=np.float32) - center + np.float32(0.5)) * invscale
        w = np.maximum(0, 1 - np.abs(x)) if mode == "bilinear" else _cubic(x, BICUBIC_AA_A)
        total = w.sum()
        matrix[i, low:high] = w / total if total != 0 else w
    return matrix


def resample_matrix(size_in: int, size_out: int, mode: str, antialias: bool = False) -> np.ndarray:
    """(size_out, size_in) float32 weights: row i mixes the inputs that output i reads along one axis,
    with torch's index arithmetic in float32 (so nearest picks the same pixel at every size)."""
    scale = np.float32(size_in) / np.float32(size_out)
    if antialias:
        return _antialiased(size_in, size_out, scale, mode)
    out = np.arange(size_out, dtype=np.float32)
    matrix = np.zeros((size_out, size_in), np.float32)
    rows = np.arange(size_out)
    if mode in ("nearest", "nearest-exact"):
        if mode == "nearest" and size_out in (size_in, 2 * size_in):  # torch's exact special cases
            source = rows * size_in // size_out
        else:
            source = np.floor((out + np.float32(0.5 if mode == "nearest-exact" else 0)) * scale).astype(np.int64)
        matrix[rows, np.minimum(source, size_in - 1)] = 1
        return matrix
    source = scale * (out + np.float32(0.5)) - np.float32(0.5)
    if mode == "bilinear":
        source = np.maximum(source, 0)
        low = source.astype(np.int64)
        high = np.minimum(low + 1, size_in - 1)
        frac = source - low
        np.add.at(matrix, (rows, low), 1 - frac)
        np.add.at(matrix, (rows, high), frac)
        return matrix
    if mode != "bicubic":
        raise ValueError(f"unknown interpolation mode {mode!r}")
    low = np.floor(source).astype(np.int64)
    t = source - low
    for offset, distance in ((-1, t + 1), (0, t), (1, 1 - t), (2, 2 - t)):
        np.add.at(matrix, (rows, np.clip(low + offset, 0, size_in - 1)), _cubic(distance, BICUBIC_A))
    return matrix


def upscale_latents(latents: mx.array, height: int, width: int, upscaler: str) -> mx.array:
    """NHWC latents resized to (height, width) with one of LATENT_UPSCALE_MODES."""
    mode, antialias = LATENT_UPSCALE_MODES[upscaler]
    rows = mx.array(resample_matrix(latents.shape[1], height, mode, antialias))
    columns = mx.array(resample_matrix(latents.shape[2], width, mode, antialias))
    out = mx.einsum("hH,nHWc->nhWc", rows, latents.astype(mx.float32))
    return mx.einsum("wW,nhWc->nhwc", columns, out)


# -- the plan of the second pass ----------------------------------------------------------------


@dataclass(frozen=True)
class HiresSize:
    """Where the first pass goes: upscaled to `upscale_*` pixels, then `crop_*` latent cells cut off
    (left/top get half, rounded down) to give the final size."""

    upscale_width: int
    upscale_height: int
    crop_x: int = 0
    crop_y: int = 0

    def final(self, factor: int) -> tuple[int, int]:
        return self.upscale_width - self.crop_x * factor, self.upscale_height - self.crop_y * factor

    def crop(self, latents: mx.array) -> mx.array:
        h, w = latents.shape[1:3]
        top, left = self.crop_y // 2, self.crop_x // 2
        return latents[:, top : h - (self.crop_y + 1) // 2, left : w - (self.crop_x + 1) // 2]


def hires_size(request: GenerationRequest, factor: int = 8) -> HiresSize:
    """A1111's target resolution of the request's hires pass, floored to whole latent cells."""
    width, height = request.width, request.height
    resize_x, resize_y = request.hires_width, request.hires_height
    if resize_x == 0 and resize_y == 0:
        return HiresSize(_cells(width * request.hires_scale, factor), _cells(height * request.hires_scale, factor))
    if resize_y == 0:
        return HiresSize(_cells(resize_x, factor), _cells(resize_x * height // width, factor))
    if resize_x == 0:
        return HiresSize(_cells(resize_y * width // height, factor), _cells(resize_y, factor))
    # cover the requested size with the first pass's aspect ratio, then crop the overhang
    if width / height < resize_x / resize_y:
        up_x, up_y = resize_x, resize_x * height // width
    else:
        up_x, up_y = resize_y * width // height, resize_y
    size = HiresSize(_cells(up_x, factor), _cells(up_y, factor))
    return dataclasses.replace(size, crop_x=(up_x - resize_x) // factor, crop_y=(up_y - resize_y) // factor)


def _cells(pixels: float, factor: int) -> int:
    return int(pixels) // factor * factor


@dataclass(frozen=True)
class HiresPlan:
    """The validated second pass: `request` is it as an own request (hires size, steps, sampler and
    prompts, no initial latents), `sigmas` the tail of its schedule that runs."""

    size: HiresSize
    upscaler: str
    request: GenerationRequest
    sampler: SamplerInfo
    sigmas: np.ndarray


def _check_hires_fields(request: GenerationRequest) -> None:
    scale = request.hires_scale
    if not _is_real(scale) or scale < 0:
        raise RequestError("hires_scale", scale, "0 (no hires fix) or a positive number")
    for name in ("hires_width", "hires_height"):
        value = getattr(request, name)
        if not isinstance(value, int) or isinstance(value, bool) or value % 8 or not 0 <= value <= MAX_SIZE:
            raise RequestError(name, value, f"0 (from the scale or the other side) or a multiple of 8 up to {MAX_SIZE}")
    if not isinstance(request.hires_steps, int) or not 0 <= request.hires_steps <= MAX_STEPS:
        raise RequestError("hires_steps", request.hires_steps, f"0 (as many as the first pass) or up to {MAX_STEPS}")
    if not _is_real(request.hires_denoise) or not 0 <= request.hires_denoise <= 1:
        raise RequestError("hires_denoise", request.hires_denoise, "a number from 0 to 1")
    for name in ("hires_prompt", "hires_negative"):
        check_text(name, getattr(request, name))
    if not isinstance(request.hires_upscaler, str) or not request.hires_upscaler.strip():
        raise RequestError("hires_upscaler", request.hires_upscaler, "one of " + ", ".join(builtin_upscalers()) + " or an upscaler model")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plan_hires(config: ModelConfig, request: GenerationRequest) -> HiresPlan | None:
    """The hires pass of a validated first-pass request, or None without hires fix; RequestError
    names the field for anything it cannot run, the hires size beyond the limits included."""
    _check_hires_fields(request)
    if not hires_enabled(request):
        return None
    if request.init_image is not None:
        raise RequestError("hires_scale", request.hires_scale, "0 with an init_image: hires fix is a txt2img pass")
    factor = config.vae.downscale
    size = hires_size(request, factor)
    width, height = size.final(factor)
    field = "hires_scale" if request.hires_width == request.hires_height == 0 else "hires_width"
    value = request.hires_scale if field == "hires_scale" else f"{request.hires_width}x{request.hires_height}"
    if not (MIN_SIZE <= min(width, height) and max(width, height) <= MAX_SIZE) or max(
        size.upscale_width, size.upscale_height
    ) > MAX_UPSCALED_SIDE:
        largest = MAX_SIZE / max(request.width, request.height)
        raise RequestError(
            field, value, f"a hires size from {MIN_SIZE} to {MAX_SIZE} pixels a side, but {request.width}x"
            f"{request.height} becomes {width}x{height} (at most {largest:.2f}x for this size)",
        )
    name = request.hires_sampler or request.sampler
    try:
        sampler = sampler_by_name(name)
    except ValueError:
        raise RequestError("hires_sampler", name, "one of " + ", ".join(s.name for s in SAMPLERS)) from None
    steps = request.hires_steps or request.steps
    second = dataclasses.replace(
        request, width=width, height=height, steps=steps, sampler=sampler.name, latents=None,
        prompt=request.hires_prompt or request.prompt, negative_prompt=request.hires_negative or request.negative_prompt,
    )
    try:
        sigmas = sigmas_for(
            sampler.name, request.schedule, steps, NoiseSchedule.from_config(config.noise_schedule),
            sdxl=config.family.startswith("sdxl"),
        )
    except ValueError as exc:
        raise RequestError("hires_steps", steps, f"a step count {sampler.name} can run ({exc})") from None
    upscaler = _canonical_upscaler(request.hires_upscaler)
    return HiresPlan(size, upscaler, second, sampler, img2img_sigmas(sigmas, request.hires_denoise))


def _canonical_upscaler(choice: str) -> str:
    """A built-in upscaler under its canonical name (any case), else the model name or file as given."""
    builtins = {name.lower(): name for name in builtin_upscalers()}
    return builtins.get(choice.strip().lower(), choice)


# -- running it -----------------------------------------------------------------------------------

Start = Callable[[ImageNoise], mx.array]  # the noise-free start latent of the second pass


def upscaler_network(plan: HiresPlan, read: UpscalerReader | None) -> nn.Module | None:
    """The network of a model upscaler (None for the built-ins), read before any model runs;
    RequestError in one line when it cannot be found or read."""
    if plan.upscaler in builtin_upscalers():
        return None
    if read is None:
        raise RequestError(
            "hires_upscaler", plan.upscaler, "one of " + ", ".join(builtin_upscalers()) + " (this caller reads no upscaler models)"
        )
    try:
        return read(plan.upscaler)
    except (OSError, ValueError) as exc:
        raise RequestError("hires_upscaler", plan.upscaler, f"a readable upscaler model ({exc})") from None


def upscaled_start(
    codec: VAECodec, latents: mx.array, plan: HiresPlan, network: nn.Module | None, tiling: bool | None
) -> Start:
    """The first pass's latents brought to the hires size: interpolated in latent space, or decoded,
    upscaled as pictures and encoded again (then sampled from the posterior with the next draw)."""
    factor = codec.downscale
    size = plan.size
    if plan.upscaler in LATENT_UPSCALE_MODES:
        upscaled = size.crop(upscale_latents(latents, size.upscale_height // factor, size.upscale_width // factor, plan.upscaler))
        return lambda noise: upscaled
    target = (size.upscale_width, size.upscale_height)
    pictures = [upscale_picture(to_image(p), target, network or plan.upscaler) for p in np.array(codec.decode(latents, tiling))]
    moments = size.crop(codec.encode(mx.array(np.stack([np.asarray(p, np.float32) / 255 for p in pictures])), tiling))
    return lambda noise: codec.latents(moments, noise())


def upscale_picture(picture: Image.Image, size: tuple[int, int], upscaler: nn.Module | str) -> Image.Image:
    """A picture brought to `size` as A1111's resize_image does with an upscaler: upscaled by the
    larger of the two factors, then Lanczos to the exact size."""
    scale = max(size[0] / picture.width, size[1] / picture.height)
    upscaled = upscale_image(picture, scale, upscaler)
    return upscaled if upscaled.size == size else upscaled.resize(size, Image.Resampling.LANCZOS)
