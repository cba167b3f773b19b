"""The request/result API between a caller (CLI, app, scripts) and the generation pipeline.

Everything a generation needs is in one frozen `GenerationRequest`; results and progress come back as
typed messages. The engine never reads settings or widgets.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

MIN_SIZE, MAX_SIZE = 64, 2048
MAX_STEPS = 1000
RANDOM_SEED = -1
MAX_SEED = 2**32 - 1  # random seeds are drawn up to this, as A1111 draws them (unsigned 32-bit)
# Image k of a run uses seed + k without wrapping (A1111's rule), so the seed of a later image may pass
# MAX_SEED; every recorded seed is accepted back, up to what the noise generator's 64-bit key holds.
LARGEST_SEED = 2**64 - 1
EXCERPT = 24  # characters of a text shown before the character it is refused for
# How a prompt's AND parts combine: composable diffusion (A1111), or one weighted sum of their encodings
AND_BLENDS = ("weights", "embedding")


@dataclass(frozen=True)
class LoraRequest:
    """A LoRA for one generation, as A1111's `<lora:NAME:TE_W:UNET_W>` (`<lora:NAME:W>`: both W):
    `name` is a library name (the file stem) or a file path."""

    name: str
    text_encoder_weight: float = 1.0
    unet_weight: float = 1.0


class RequestError(ValueError):
    """A request that cannot run; raised before any model runs."""

    def __init__(self, field_name: str, value: object, allowed: str):
        self.field = field_name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field_name} = {value!r} is not allowed: {allowed}")


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str = ""
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: str = "DPM++ 2M"  # A1111 names, matched case-insensitively
    schedule: str = "Automatic"  # Automatic = the sampler's A1111 default
    seed: int = RANDOM_SEED  # -1 = random; the seed used is reported in the result
    batch_size: int = 1  # images per model call
    batch_count: int = 1  # model calls; image k of the whole run uses seed + k
    clip_skip: int = 1  # A1111 meaning: 1 = the family's normal layer
    init_image: Image.Image | None = None  # img2img / inpainting source
    strength: float = 0.75  # img2img denoising strength, 0 returns the input
    mask: Image.Image | None = None  # inpainting: white = repaint
    mask_blur: int = 4  # pixels
    # Initial noise in diffusers layout (batch_size, 4, height/8, width/8), unscaled standard normal;
    # the sampler scales it by its first sigma.
    latents: np.ndarray | None = None
    aesthetic_score: float = 6.0  # SDXL refiner
    negative_aesthetic_score: float = 2.5
    vae_tiling: bool | None = None  # None: tile only when the image is larger than the VAE's tile
    low_memory: bool = False  # release the text encoders before the UNet runs
    dash_lines_negative: bool = False  # prompt lines starting with `-` go to the negative prompt
    and_blend: str = "weights"  # one of AND_BLENDS
    # bigger pictures (issue 21): variation seeds, outpainting, the SDXL refiner
    variation_seed: int = RANDOM_SEED  # -1 = random; used when variation_strength > 0; image k uses + k
    variation_strength: float = 0.0  # 0 = the seed's noise, 1 = the variation seed's (spherical blend)
    resize_seed_from: tuple[int, int] = (0, 0)  # (width, height) the seeds' noise is made at; (0, 0) = ours
    outpaint: tuple[int, int, int, int] = (0, 0, 0, 0)  # pixels added left, right, top, bottom of init_image
    refiner: str = ""  # an SDXL refiner model folder (or library name); "" = none
    refiner_switch: float = 0.8  # the fraction of the steps after which the refiner takes over
    # LoRAs (issue 17): merged before the prompts are encoded, with those of the prompts' <lora:...> tags
    loras: tuple[LoraRequest, ...] = ()
    # models: the VAE to decode with: a library VAE name, a VAE file or a diffusers `vae` folder;
    # None or "Automatic" is the model's own (mlx_sd.vae_swap)
    vae: str | None = None
    # hires fix (mlx_sd.hires): on when hires_scale or hires_width/hires_height is not 0
    hires_scale: float = 0.0  # the first pass's size times this; hires_width/hires_height win when given
    hires_width: int = 0  # 0: from hires_height and the aspect ratio (both 0: from hires_scale)
    hires_height: int = 0
    hires_upscaler: str = "Latent"  # a latent mode, Lanczos, Nearest, or an upscaler model's name or file
    hires_steps: int = 0  # 0: as many as the first pass
    hires_denoise: float = 0.7  # the second pass's img2img strength
    hires_prompt: str = ""  # "": the prompt
    hires_negative: str = ""  # "": the negative prompt
    hires_sampler: str = ""  # "": the sampler

    @property
    def total_images(self) -> int:
        return self.batch_size * self.batch_count

    def validate(self, latent_factor: int = 8) -> None:
        """Check every field against the rules; raises RequestError naming field, value and rule.

        `latent_factor` is the model's VAE downscale (8 for Stable Diffusion)."""
        for name in ("prompt", "negative_prompt"):
            _check_text(name, getattr(self, name))
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or value % 8 or not MIN_SIZE <= value <= MAX_SIZE:
                raise RequestError(name, value, f"a multiple of 8 from {MIN_SIZE} to {MAX_SIZE}")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise RequestError("steps", self.steps, f"a whole number from 1 to {MAX_STEPS}")
        if not _is_number(self.cfg_scale) or not 0 <= self.cfg_scale <= 100:
            raise RequestError("cfg_scale", self.cfg_scale, "a number from 0 to 100")
        for name in ("batch_size", "batch_count"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 64:
                raise RequestError(name, value, "a whole number from 1 to 64")
        largest = LARGEST_SEED - (self.total_images - 1)  # the last image's seed must fit too
        if not isinstance(self.seed, int) or not (self.seed == RANDOM_SEED or 0 <= self.seed <= largest):
            raise RequestError("seed", self.seed, f"-1 (random) or a whole number from 0 to {largest}")
        if not isinstance(self.clip_skip, int) or not 1 <= self.clip_skip <= 12:
            raise RequestError("clip_skip", self.clip_skip, "a whole number from 1 to 12")
        if not _is_number(self.strength) or not 0.0 <= self.strength <= 1.0:
            raise RequestError("strength", self.strength, "a number from 0 to 1")
        if self.mask is not None:
            if self.init_image is None:
                raise RequestError("mask", "a mask image", "a mask needs an init_image to inpaint")
            if self.mask.size != self.init_image.size:
                raise RequestError(
                    "mask", f"{self.mask.size[0]}x{self.mask.size[1]}",
                    f"the size of init_image ({self.init_image.size[0]}x{self.init_image.size[1]})",
                )
        if not isinstance(self.mask_blur, int) or not 0 <= self.mask_blur <= 64:
            raise RequestError("mask_blur", self.mask_blur, "a whole number of pixels from 0 to 64")
        if self.and_blend not in AND_BLENDS:
            raise RequestError("and_blend", self.and_blend, "one of " + ", ".join(AND_BLENDS))
        self.validate_bigger()
        _check_loras(self.loras)
        if self.latents is not None:
            if not isinstance(self.latents, np.ndarray):
                raise RequestError("latents", f"a {type(self.latents).__name__}", "a numpy array (or None)")
            expected = (self.batch_size, 4, self.height // latent_factor, self.width // latent_factor)
            if tuple(self.latents.shape) != expected:
                raise RequestError(
                    "latents", f"an array of shape {tuple(self.latents.shape)}",
                    f"shape (batch_size, 4, height/{latent_factor}, width/{latent_factor}) = {expected}",
                )

    def validate_bigger(self) -> None:
        """Variation seeds, outpainting and the refiner (issue 21)."""
        largest = LARGEST_SEED - (self.total_images - 1)
        seed = self.variation_seed
        if not isinstance(seed, int) or not (seed == RANDOM_SEED or 0 <= seed <= largest):
            raise RequestError("variation_seed", seed, f"-1 (random) or a whole number from 0 to {largest}")
        if not _is_number(self.variation_strength) or not 0.0 <= self.variation_strength <= 1.0:
            raise RequestError("variation_strength", self.variation_strength, "a number from 0 to 1")
        size = self.resize_seed_from
        if not _is_pair(size) or (size != (0, 0) and not all(_is_size(side) for side in size)):
            raise RequestError(
                "resize_seed_from", size, f"(0, 0) or (width, height), multiples of 8 from {MIN_SIZE} to {MAX_SIZE}"
            )
        sides = self.outpaint
        if not (isinstance(sides, tuple) and len(sides) == 4 and all(_is_whole(side) for side in sides)) or any(
            side < 0 or side % 8 for side in sides
        ):
            raise RequestError("outpaint", sides, "(left, right, top, bottom) pixels, each a multiple of 8 from 0")
        if any(sides):
            if self.init_image is None:
                raise RequestError("outpaint", sides, "outpainting extends an init_image: give one")
            if self.mask is not None:
                raise RequestError("mask", "a mask image", "no mask with outpaint (it masks the new area itself)")
            grown = (self.width + sides[0] + sides[1], self.height + sides[2] + sides[3])
            if max(grown) > MAX_SIZE:
                raise RequestError(
                    "outpaint", sides, f"a canvas of at most {MAX_SIZE}x{MAX_SIZE}; {self.width}x{self.height} "
                    f"grows to {grown[0]}x{grown[1]}",
                )
        if not isinstance(self.refiner, str):
            raise RequestError("refiner", f"a {type(self.refiner).__name__}", "a model folder or name (a str)")
        if not _is_number(self.refiner_switch) or not 0.0 < self.refiner_switch < 1.0:
            raise RequestError("refiner_switch", self.refiner_switch, "a number between 0 and 1 (exclusive)")


def _is_whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_pair(value: object) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(_is_whole(side) for side in value)


def _is_size(value: int) -> bool:
    return value % 8 == 0 and MIN_SIZE <= value <= MAX_SIZE


def _check_text(name: str, text: object) -> None:
    """Text must be a str that UTF-8 can encode: a lone surrogate (what surrogateescape makes of
    command-line bytes that are not UTF-8, or a broken UTF-16 pair from an API) could be generated
    from but not saved in the image's metadata."""
    if not isinstance(text, str):
        raise RequestError(name, f"a {type(text).__name__}", "text (a str)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            name, text[max(0, exc.start - EXCERPT) : exc.start + 1],
            f"valid Unicode text; character {exc.start + 1} is a lone surrogate, which is what bytes that are "
            "not UTF-8 become (is the text in another encoding?)",
        ) from None


def _check_loras(loras: object) -> None:
    rule = "a tuple of LoraRequest(name, text_encoder_weight, unet_weight) with a name and finite weights"
    if not isinstance(loras, tuple):
        raise RequestError("loras", f"a {type(loras).__name__}", rule)
    for lora in loras:
        weights = (getattr(lora, "text_encoder_weight", None), getattr(lora, "unet_weight", None))
        named = isinstance(lora, LoraRequest) and isinstance(lora.name, str) and lora.name.strip()
        if not named or not all(_is_number(w) and np.isfinite(w) for w in weights):
            raise RequestError("loras", lora, rule)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy scalars included


@dataclass(frozen=True)
class Progress:
    """Sent to `on_progress` after each sampling step."""

    step: int  # 1-based step within the current image batch
    total: int  # steps of this batch
    batch_index: int  # which of batch_count
    batch_count: int
    preview: Image.Image | None = None  # cheap latent-to-RGB approximation, no VAE


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    peak_memory_bytes: int = 0  # MLX's own peak-memory counter over the run
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    notices: list[str] = field(default_factory=list)  # LoRA keys matching no layer, duplicate library names
