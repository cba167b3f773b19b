"""Parameter presets and aspect-ratio sizes, Qt-free.

A preset is a partial set of generation parameters (`app.settings.Preset`): the built-in Portrait,
Scene, Quick and Quality, plus the user's own, kept in `AppSettings.user_presets`. A preset may name an
aspect ratio instead of a size, so one preset fits every model: the size is worked out from the model's
native resolution when the preset is applied.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from mlx_sd.request import MAX_SIZE, MIN_SIZE, GenerationRequest
from mlx_sd.samplers import sampler_by_name
from mlx_sd.schedules import schedule_by_name

from .settings import AppSettings, Preset

# width / height
ASPECTS: dict[str, float] = {"square": 1.0, "portrait": 2 / 3, "landscape": 3 / 2, "wide": 16 / 9}

# The parameters a preset may set, with their types.
PRESET_FIELDS: dict[str, type] = {
    "sampler": str,
    "schedule": str,
    "steps": int,
    "cfg_scale": float,
    "aspect": str,
    "width": int,
    "height": int,
    "batch_size": int,
    "batch_count": int,
    "clip_skip": int,
}

BUILTIN_PRESETS: tuple[Preset, ...] = (
    Preset("Portrait", {"aspect": "portrait", "sampler": "DPM++ 2M", "schedule": "Karras", "steps": 25, "cfg_scale": 7.0}),
    Preset("Scene", {"aspect": "landscape", "sampler": "DPM++ 2M", "schedule": "Karras", "steps": 30, "cfg_scale": 7.0}),
    Preset("Quick", {"sampler": "DPM++ 2M", "schedule": "Karras", "steps": 12, "cfg_scale": 6.0}),
    Preset("Quality", {"sampler": "DPM++ SDE", "schedule": "Karras", "steps": 30, "cfg_scale": 7.0}),
)
BUILTIN_NAMES = frozenset(p.name.casefold() for p in BUILTIN_PRESETS)


class PresetError(ValueError):
    """A preset that cannot be saved (empty name, a built-in's name)."""


def size_step(native: int) -> int:
    """Sizes are multiples of 64 for real models (SDXL's buckets), finer for tiny test models."""
    return max(8, min(64, native // 8))


def snap_size(ratio: float, native: int) -> tuple[int, int]:
    """The (width, height) closest to `ratio` with about the native pixel count, in multiples of
    `size_step(native)`. Ratio error and area error count equally (in log space), and the area may
    not exceed the native one (more pixels cost memory and drift from what the model was trained
    on); for SDXL this gives its training buckets (832x1216 portrait, 1344x768 wide)."""
    if ratio <= 0 or not math.isfinite(ratio):
        raise ValueError(f"aspect ratio must be a positive number, got {ratio}")
    if native < MIN_SIZE:
        raise ValueError(f"native size must be at least {MIN_SIZE}, got {native}")
    step = size_step(native)
    area = float(native * native)
    best: tuple[bool, float, float, int, int] | None = None
    for width in range(MIN_SIZE, MAX_SIZE + 1, step):
        # for a fixed width the cost is lowest between height = width / ratio and height = area / width
        kinks = (width / ratio / step, area / width / step)
        for height in {f(k) * step for k in kinks for f in (math.floor, math.ceil)}:
            if not MIN_SIZE <= height <= MAX_SIZE:
                continue
            # too large only wins when nothing smaller exists (tiny natives with a tall ratio)
            too_large = width * height > area
            ratio_error = abs(math.log(width / height / ratio))
            cost = round(ratio_error + abs(math.log(width * height / area)), 9)
            # equal costs are common (e.g. 384x576 and 448x576 at 512): the truer shape wins
            candidate = (too_large, cost, ratio_error, width, height)
            if best is None or candidate < best:
                best = candidate
    assert best is not None  # MIN_SIZE x MIN_SIZE always qualifies
    return best[3], best[4]


def aspect_size(aspect: str, native: int) -> tuple[int, int]:
    if aspect not in ASPECTS:
        raise ValueError(f"aspect {aspect!r} is not one of {', '.join(ASPECTS)}")
    return snap_size(ASPECTS[aspect], native)


def clean_params(params: dict[str, Any]) -> dict[str, Any]:
    """Only the keys a preset may set, with valid values; anything else is dropped (a hand-edited
    settings file must not break the window)."""
    clean: dict[str, Any] = {}
    for key, kind in PRESET_FIELDS.items():
        if key not in params:
            continue
        value = params[key]
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind:
            continue
        clean[key] = value
    return {k: v for k, v in clean.items() if _valid(k, v)}


def _valid(key: str, value: Any) -> bool:
    """Whether a preset value is one a request accepts, by the engine's own rules."""
    if key == "aspect":
        return value in ASPECTS
    try:
        if key == "sampler":
            sampler_by_name(value)
        elif key == "schedule":
            schedule_by_name(value)
        else:
            dataclasses.replace(GenerationRequest(), **{key: value}).validate()
    except ValueError:  # RequestError is a ValueError
        return False
    return True


def resolve(preset: Preset, native: int) -> dict[str, Any]:
    """The parameters a preset sets for a model of native size `native`: an aspect becomes a size."""
    params = clean_params(preset.params)
    aspect = params.pop("aspect", None)
    if aspect is not None:
        params["width"], params["height"] = aspect_size(aspect, native)
    return params


def all_presets(settings: AppSettings) -> list[Preset]:
    """Built-ins first, then the user's own in the order saved."""
    return [*BUILTIN_PRESETS, *settings.user_presets]


def make_preset(name: str, values: dict[str, Any]) -> Preset:
    """A user preset from the window's current values; raises PresetError for a bad name."""
    name = " ".join(name.split())
    if not name:
        raise PresetError("a preset needs a name; got an empty one")
    if name.casefold() in BUILTIN_NAMES:
        raise PresetError(f"{name!r} is a built-in preset; choose another name")
    return Preset(name, clean_params(values))


def with_user_preset(settings: AppSettings, preset: Preset) -> AppSettings:
    """Settings with `preset` saved, replacing a user preset of the same name (case-insensitive)."""
    kept = [p for p in settings.user_presets if p.name.casefold() != preset.name.casefold()]
    return dataclasses.replace(settings, user_presets=[*kept, preset])


def without_user_preset(settings: AppSettings, name: str) -> AppSettings:
    kept = [p for p in settings.user_presets if p.name.casefold() != name.casefold()]
    return dataclasses.replace(settings, user_presets=kept)
