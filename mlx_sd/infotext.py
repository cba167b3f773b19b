"""A1111 infotext: the `parameters` text stored with every image (docs/facts.md §6.2).

    <prompt, may span lines>
    Negative prompt: <negative prompt>          (only when it is not empty)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, ...

`format_infotext` writes it for one image of a request, `parse_infotext` reads any A1111 infotext
with A1111's rules, and `request_from_infotext` turns one back into a GenerationRequest.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath

from . import __version__
from .composable import BLEND_INFOTEXT_KEY
from .config import ModelConfig
from .hires import hires_enabled, upscaler_label
from .request import AND_BLENDS, GenerationRequest
from .samplers import sampler_by_name, split_sampler_name
from .variation import SEED_RESIZE_FROM, VARIATION_SEED, VARIATION_STRENGTH

NEGATIVE_PREFIX = "Negative prompt:"
VERSION = f"mlx-sd v{__version__}"
MODEL_HASH_LENGTH = 10
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# The parameter line is the last line only when it holds at least 3 `key: value` pairs (A1111's rule).
# A1111 finds the pairs with `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)`, whose search
# retries at every character of a long run of key characters without a colon: quadratic in the line.
# The extra alternatives consume such a run, and any characters that cannot start a key, whole: the
# search moves on in one step, and hides no pair, because a start inside what they skip fails too.
_PAIR_OR_SKIP = re.compile(r'\s*(?:(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)|\w[\w \-/]*[^\w\s]*|[^\w\s]+|.)', re.S)
_SIZE = re.compile(r"^(\d+)x(\d+)$")
MIN_PARAMS = 3


def quote(value: object) -> str:
    """A1111's quoting: a JSON string when the value holds `,`, a newline or `:`, else as is."""
    text = str(value)
    if "," in text or "\n" in text or ":" in text:
        return json.dumps(text, ensure_ascii=False)
    return text


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


def _number(value: float | int) -> str:
    """7.0 -> "7", 7.5 -> "7.5" (how A1111's sliders print)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def checkpoint_stem(name: str) -> str:
    """A checkpoint path or repo id without its folders and checkpoint extension, as A1111 writes
    `Model:` ("C:\\models\\v1-5.ckpt" -> "v1-5", "stabilityai/sdxl-turbo" -> "sdxl-turbo")."""
    base = str(name).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    suffix = PurePath(base).suffix
    return base[: -len(suffix)] if suffix.lower() in CHECKPOINT_SUFFIXES else base


def model_hash(sha256: str) -> str:
    """`Model hash:` (A1111's "sha256" short hash): the first 10 hex digits of the source's SHA-256."""
    return sha256[:MODEL_HASH_LENGTH].lower()


def model_name(config: ModelConfig) -> str:
    """`Model:` is the source checkpoint's base name without extension."""
    return checkpoint_stem(config.source.name)


def format_infotext(
    request: GenerationRequest,
    seed: int,
    model: ModelConfig | None = None,
    extra: Mapping[str, object] | None = None,
) -> str:
    """The infotext of one image: `seed` is the seed that image used; `extra` adds parameters
    (e.g. "Lora hashes", "Hires steps") after the standard ones, in A1111's order."""
    params: dict[str, object | None] = {
        "Steps": request.steps,
        "Sampler": request.sampler,
        "Schedule type": request.schedule,
        "CFG scale": _number(request.cfg_scale),
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model_hash(model.source.sha256) if model and model.source.sha256 else None,
        "Model": (model_name(model) or None) if model else None,
        "Denoising strength": _number(request.strength) if request.init_image is not None else _hires_denoise(request),
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        "Mask blur": request.mask_blur if request.mask is not None else None,
        **_hires_params(request),
        **(extra or {}),
        "Version": VERSION,
    }
    line = ", ".join(f"{key}: {quote(value)}" for key, value in params.items() if value is not None)
    negative = f"\n{NEGATIVE_PREFIX} {request.negative_prompt}" if request.negative_prompt else ""
    return f"{request.prompt}{negative}\n{line}".strip()


def hashes_value(hashes: Mapping[str, str]) -> str:
    """A `Lora hashes` / `TI hashes` value: `name: hash, name2: hash2`, the names without the `:` and `,`
    that would break the list (A1111)."""
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {short}" for name, short in hashes.items())


def resource_hashes(params: Mapping[str, str], key: str) -> dict[str, str]:
    """The names and hashes of a parsed infotext's `Lora hashes` or `TI hashes` (`key`); entries without
    a hash are skipped."""
    pairs = (entry.rpartition(":") for entry in params.get(key, "").split(","))
    return {name.strip(): short.strip() for name, colon, short in pairs if colon and name.strip() and short.strip()}


@dataclass(frozen=True)
class Infotext:
    """A parsed infotext. `params` holds every pair of the parameter line in order (unknown keys
    included), quoted values decoded, and `WxH` values split into `<key>-1` and `<key>-2`."""

    prompt: str = ""
    negative_prompt: str = ""
    params: dict[str, str] = field(default_factory=dict)


def _pairs(line: str) -> list[tuple[str, str]]:
    """Every `key: value` of a parameter line, as A1111's regex finds them, in linear time."""
    return [(key, value) for key, value in _PAIR_OR_SKIP.findall(line) if key]


def parse_infotext(text: str) -> Infotext:
    """Parse an A1111 infotext the way A1111's `parse_generation_parameters` does."""
    *lines, last = text.replace("\r\n", "\n").strip().split("\n")
    pairs = _pairs(last)
    if len(pairs) < MIN_PARAMS:
        lines.append(last)
        pairs = []

    prompt: list[str] = []  # lines of each part, joined once at the end
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        # Like A1111, empty lines before the first text of a part are dropped.
        part = negative if in_negative else prompt
        if part or line:
            part.append(line)

    params: dict[str, str] = {}
    for key, value in pairs:
        if not value:
            continue  # A1111 skips a key with nothing after the colon
        value = _unquote(value) if value[0] == '"' else value
        size = _SIZE.match(value)
        if size:
            params[f"{key}-1"], params[f"{key}-2"] = size.group(1), size.group(2)
        else:
            params[key] = value
    return Infotext("\n".join(prompt), "\n".join(negative), params)


def _convert(value: str | None, kind: type) -> int | float | None:
    if value is None:
        return None
    value = value.strip()
    try:
        return int(value)  # exact for any size of seed
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number) or (kind is int and not number.is_integer()):
        return None
    return int(number) if kind is int else number


def _refiner_from_params(params: Mapping[str, str]) -> dict[str, object]:
    """The SDXL refiner's fields: `Refiner` is A1111's "name [hash]"; the request wants the name."""
    value = params.get("Refiner", "").strip()
    name, bracket, short_hash = value[:-1].rpartition(" [") if value.endswith("]") else ("", "", "")
    if bracket and short_hash and all(c in "0123456789abcdefABCDEF" for c in short_hash):
        value = name
    changes: dict[str, object] = {"refiner": value}
    switch = _convert(params.get("Refiner switch at"), float)
    if switch is not None:
        changes["refiner_switch"] = float(switch)
    return changes


def request_from_infotext(
    source: str | Infotext, base: GenerationRequest = GenerationRequest()
) -> GenerationRequest:
    """A request that regenerates the image: fields the infotext gives replace those of `base`.

    Prompt and negative prompt always come from the text (a missing negative line means an empty
    negative, as A1111 writes it). When the text has a parameter line, a missing `Clip skip` means 1
    and a missing `Schedule type` means Automatic (A1111's reading). Values that do not parse keep
    `base`'s value; the result is not validated (call `validate()`).
    """
    info = parse_infotext(source) if isinstance(source, str) else source
    params = info.params
    changes: dict[str, object] = {"prompt": info.prompt, "negative_prompt": info.negative_prompt}

    numbers = {
        "steps": ("Steps", int), "cfg_scale": ("CFG scale", float), "seed": ("Seed", int),
        "width": ("Size-1", int), "height": ("Size-2", int), "strength": ("Denoising strength", float),
        "mask_blur": ("Mask blur", int), "clip_skip": ("Clip skip", int),
        "variation_seed": (VARIATION_SEED, int), "variation_strength": (VARIATION_STRENGTH, float),
    }
    for name, (key, kind) in numbers.items():
        value = _convert(params.get(key), kind)
        if value is not None:
            changes[name] = float(value) if kind is float else value

    if params:  # a parameter line was found: what it leaves out has A1111's default meaning
        if "Clip skip" not in params:
            changes["clip_skip"] = 1
        changes["schedule"] = params.get("Schedule type", "Automatic").strip()
        # variation seeds (A1111's reading): no strength means none, no `Seed resize from` the image's size
        changes.setdefault("variation_strength", 0.0)
        resize = [_convert(params.get(f"{SEED_RESIZE_FROM}-{side}"), int) for side in (1, 2)]
        changes["resize_seed_from"] = tuple(resize) if None not in resize else (0, 0)
        changes.update(_refiner_from_params(params))
    if params.get("VAE", "").strip():  # models: A1111 writes the file's name; the library knows its stem
        changes["vae"] = checkpoint_stem(params["VAE"].strip())
    if params:
        changes.update(_hires_changes(params))
    if params.get("Sampler", "").strip():
        # Older infotexts combine the two ("DPM++ 2M Karras"); the schedule in the name wins.
        sampler, named_schedule = split_sampler_name(params["Sampler"])
        changes["sampler"] = sampler
        if named_schedule != "Automatic":
            changes["schedule"] = named_schedule
    # Prompt blend (ours): how the AND parts were combined; without it they were composable weights
    if params:
        blend = params.get(BLEND_INFOTEXT_KEY, "weights").strip()
        changes["and_blend"] = blend if blend in AND_BLENDS else base.and_blend
    return dataclasses.replace(base, **changes)


# -- hires fix (mlx_sd.hires): A1111's keys, written and read back ---------------------------------


def _hires_denoise(request: GenerationRequest) -> str | None:
    return _number(request.hires_denoise) if hires_enabled(request) else None


def _hires_params(request: GenerationRequest) -> dict[str, object | None]:
    """A1111's hires keys in its order; the prompts and sampler only when they differ from the first pass's."""
    if not hires_enabled(request):
        return {}
    try:
        sampler = sampler_by_name(request.hires_sampler).name if request.hires_sampler else request.sampler
    except ValueError:
        sampler = request.hires_sampler
    resized = request.hires_width or request.hires_height
    return {
        "Hires sampler": sampler if sampler != request.sampler else None,
        "Hires prompt": request.hires_prompt if request.hires_prompt not in ("", request.prompt) else None,
        "Hires negative prompt": request.hires_negative
        if request.hires_negative not in ("", request.negative_prompt) else None,
        "Hires upscale": None if resized else _number(request.hires_scale),
        "Hires resize": f"{request.hires_width}x{request.hires_height}" if resized else None,
        "Hires steps": request.hires_steps or None,
        "Hires upscaler": upscaler_label(request.hires_upscaler),
    }


def _hires_changes(params: dict[str, str]) -> dict[str, object]:
    """The request's hires fields from a parameter line: hires fix off when it has no `Hires upscale`
    or `Hires resize`, and what a hires infotext leaves out at its default."""
    defaults = GenerationRequest()
    names = ("hires_scale", "hires_width", "hires_height", "hires_upscaler", "hires_steps", "hires_denoise",
             "hires_prompt", "hires_negative", "hires_sampler")
    changes: dict[str, object] = {name: getattr(defaults, name) for name in names}
    if "Hires upscale" not in params and "Hires resize-1" not in params:
        return changes
    numbers = {
        "hires_scale": ("Hires upscale", float), "hires_width": ("Hires resize-1", int),
        "hires_height": ("Hires resize-2", int), "hires_steps": ("Hires steps", int),
        "hires_denoise": ("Denoising strength", float),
    }
    for name, (key, kind) in numbers.items():
        value = _convert(params.get(key), kind)
        if value is not None:
            changes[name] = float(value) if kind is float else value
    texts = {"hires_upscaler": "Hires upscaler", "hires_prompt": "Hires prompt",
             "hires_negative": "Hires negative prompt", "hires_sampler": "Hires sampler"}
    changes.update({name: params[key] for name, key in texts.items() if key in params})
    return changes
