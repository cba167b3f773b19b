"""A1111 and OpenAI payloads -> the engine's `GenerationRequest`; results -> A1111's `info`.

What a request asks for that the engine does not do yet (face restoration, styles,
other inpainting fills...) is not an error: it is listed in `info["not_applied"]`.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from mlx_sd import __version__
from mlx_sd.hires import hires_enabled
from mlx_sd.request import GenerationRequest, RequestError
from mlx_sd.infotext import parse_infotext
from mlx_sd.samplers import sampler_and_schedule
from mlx_sd.variation import VARIATION_SEED

from .schema import Img2ImgRequest, OpenAIImageRequest, Txt2ImgRequest

ORIGINAL_FILL = 1  # A1111's inpainting_fill "original": the only fill the engine implements
DEFAULT_VAES = ("Automatic", "None", "")
APPLIED_OVERRIDES = {"CLIP_stop_at_last_layers", "sd_model_checkpoint", "sd_vae"}
A1111_HIRES_DENOISE = 0.75  # txt2img's denoising_strength when an API request leaves it out
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


@dataclass
class ServerOptions:
    """The A1111 options this server keeps (GET/POST /sdapi/v1/options)."""

    sd_model_checkpoint: str  # the model's title
    sd_checkpoint_hash: str | None = None
    sd_vae: str = "Automatic"
    CLIP_stop_at_last_layers: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "samples_format": "png"}


@dataclass(frozen=True)
class Translated:
    request: GenerationRequest
    model: str  # the model to run on: override_settings' checkpoint or the current option
    not_applied: tuple[str, ...]


def multiple_of_8(value: int) -> int:
    """A1111 rounds a size down to what the latent grid can hold."""
    return value - value % 8 if value > 0 else value


def a1111_request(
    payload: Txt2ImgRequest, options: ServerOptions, init_image: Image.Image | None = None,
    mask: Image.Image | None = None,
) -> Translated:
    """The engine request for a txt2img or img2img payload (the images already decoded)."""
    overrides = payload.override_settings
    sampler, schedule = sampler_and_schedule(payload.sampler_name or payload.sampler_index, payload.scheduler)
    clip_skip = overrides.get("CLIP_stop_at_last_layers", options.CLIP_stop_at_last_layers)
    if not isinstance(clip_skip, int) or isinstance(clip_skip, bool):
        raise RequestError("override_settings.CLIP_stop_at_last_layers", clip_skip, "a whole number")
    fields: dict[str, Any] = dict(
        prompt=payload.prompt, negative_prompt=payload.negative_prompt,
        width=multiple_of_8(payload.width), height=multiple_of_8(payload.height),
        steps=payload.steps, cfg_scale=payload.cfg_scale, sampler=sampler, schedule=schedule,
        seed=payload.seed, batch_size=payload.batch_size, batch_count=payload.n_iter, clip_skip=clip_skip,
        vae=_vae(payload, options),
    )
    if isinstance(payload, Img2ImgRequest):
        if init_image is None:
            raise RequestError("init_images", [], "at least one base64 image")
        if mask is not None and payload.inpainting_mask_invert:
            mask = ImageOps.invert(mask.convert("L"))
        fields.update(init_image=init_image, mask=mask, strength=payload.denoising_strength, mask_blur=payload.mask_blur)
    elif payload.enable_hr:
        fields.update(hires_fields(payload))
    fields.update(bigger_fields(payload))
    model = overrides.get("sd_model_checkpoint") or options.sd_model_checkpoint
    return Translated(GenerationRequest(**fields), str(model), _not_applied(payload, options, mask is not None))


def bigger_fields(payload: Txt2ImgRequest) -> dict[str, Any]:
    """Variation seeds and the refiner: A1111 turns either off with a value of 0 or less."""
    resize = (payload.seed_resize_from_w, payload.seed_resize_from_h)
    return {
        "variation_seed": payload.subseed,
        "variation_strength": payload.subseed_strength,
        "resize_seed_from": resize if min(resize) > 0 else (0, 0),
        "refiner": payload.refiner_checkpoint if payload.refiner_checkpoint not in ("", "None") else "",
        "refiner_switch": payload.refiner_switch_at,
    }


def _variation_seeds(request: GenerationRequest, seeds: list[int], infotexts: list[str]) -> list[int]:
    """The variation seed each image used (its infotext has the resolved one); its seed without them,
    as A1111 reports."""
    used = [parse_infotext(text).params.get(VARIATION_SEED) for text in infotexts]
    return [int(value) if value is not None else seed for value, seed in zip(used, seeds)]


def _vae(payload: Txt2ImgRequest, options: ServerOptions) -> str | None:
    """models: the VAE name override_settings or the options ask for (server.library resolves it); None
    for the model's own."""
    vae = payload.override_settings.get("sd_vae", options.sd_vae)
    if vae is not None and not isinstance(vae, str):
        raise RequestError("override_settings.sd_vae", vae, "a VAE name from /sdapi/v1/sd-vae")
    return None if vae is None or vae in DEFAULT_VAES else vae


def _not_applied(payload: Txt2ImgRequest, options: ServerOptions, inpainting: bool) -> tuple[str, ...]:
    flags = {
        "restore_faces": payload.restore_faces,
        "tiling": payload.tiling,
        "styles": bool(payload.styles),
        "script_name": bool(payload.script_name),
        "alwayson_scripts": any(payload.alwayson_scripts.values()),
    }
    if isinstance(payload, Img2ImgRequest):
        flags["init_images[1:]"] = len(payload.init_images) > 1  # every image of the run starts from the first
        flags["resize_mode"] = payload.resize_mode != 0
        flags["inpainting_fill"] = inpainting and payload.inpainting_fill != ORIGINAL_FILL
        flags["inpaint_full_res"] = inpainting and payload.inpaint_full_res
    ignored = sorted(f"override_settings.{key}" for key in payload.override_settings if key not in APPLIED_OVERRIDES)
    return tuple(name for name, asked in flags.items() if asked) + tuple(ignored)


def hires_fields(payload: Txt2ImgRequest) -> dict[str, Any]:
    """The engine's hires fields for A1111's `enable_hr` keys. Upscaler models are only ever names
    (the server reads them from the library's upscalers/ folder), never paths."""
    upscaler = payload.hr_upscaler or GenerationRequest().hires_upscaler
    if any(separator in upscaler for separator in "/\\") or upscaler.startswith("."):
        raise RequestError("hr_upscaler", upscaler, "a name from /sdapi/v1/latent-upscale-modes or /sdapi/v1/upscalers")
    sampler = sampler_and_schedule(payload.hr_sampler_name, "Automatic")[0] if payload.hr_sampler_name else ""
    return dict(
        hires_scale=payload.hr_scale, hires_width=payload.hr_resize_x, hires_height=payload.hr_resize_y,
        hires_upscaler=upscaler, hires_steps=payload.hr_second_pass_steps, hires_prompt=payload.hr_prompt,
        hires_negative=payload.hr_negative_prompt, hires_sampler=sampler,
        hires_denoise=A1111_HIRES_DENOISE if payload.denoising_strength is None else payload.denoising_strength,
    )


def openai_request(payload: OpenAIImageRequest, native_size: int) -> GenerationRequest:
    """The engine request for POST /v1/images/generations: `n` images in one batch."""
    width = height = native_size
    if payload.size:
        match = _SIZE.match(payload.size)
        if not match:
            raise RequestError("size", payload.size, "WIDTHxHEIGHT, e.g. 512x512")
        width, height = int(match[1]), int(match[2])
    defaults = GenerationRequest()
    return GenerationRequest(
        prompt=payload.prompt, negative_prompt=payload.negative_prompt, width=width, height=height,
        steps=payload.steps or defaults.steps, batch_size=payload.n,
    )


def a1111_info(
    request: GenerationRequest, seeds: list[int], infotexts: list[str], model_name: str, model_hash: str | None,
    not_applied: tuple[str, ...], interrupted: bool = False,
) -> dict[str, Any]:
    """The `info` of a txt2img/img2img response (sent as a JSON string), with A1111's keys."""
    count = len(seeds)
    subseeds = _variation_seeds(request, seeds, infotexts)
    resize = request.resize_seed_from if any(request.resize_seed_from) else (-1, -1)
    return {
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * count,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * count,
        "seed": seeds[0] if seeds else request.seed,
        "all_seeds": seeds,
        "subseed": subseeds[0] if subseeds else request.variation_seed,
        "all_subseeds": subseeds,
        "subseed_strength": request.variation_strength,
        "width": request.width,
        "height": request.height,
        "sampler_name": request.sampler,
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": model_name,
        "sd_model_hash": model_hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": resize[0],
        "seed_resize_from_h": resize[1],
        "denoising_strength": request.strength if request.init_image is not None else (
            request.hires_denoise if hires_enabled(request) else None
        ),
        "extra_generation_params": {"Schedule type": request.schedule},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": request.clip_skip,
        "version": f"mlx-sd v{__version__}",
        "not_applied": list(not_applied),
        "interrupted": interrupted,
    }
