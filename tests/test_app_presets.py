"""Presets, aspect sizes, prompt prefix/suffix and the worker's Qt-free helpers (no window needed)."""

import errno
import json
import sqlite3


import pytest
from PIL import Image

from app.generation_worker import ProgressClock, describe_error, request_params
from app.history_store import HistoryError
from app.presets import (
    ASPECTS,
    BUILTIN_PRESETS,
    PresetError,
    all_presets,
    aspect_size,
    clean_params,
    make_preset,
    resolve,
    snap_size,
    with_user_preset,
    without_user_preset,
)
from app.prompt_panel import compose_prompt, strip_affixes
from app.settings import AppSettings, Preset, load_settings, save_settings
from mlx_sd.model_format import ModelFolderError, WeightsError
from mlx_sd.request import MAX_SIZE, MIN_SIZE, GenerationRequest, RequestError


# -- aspect sizes -----------------------------------------------------------------------------


def test_sdxl_aspects_are_its_training_buckets() -> None:
    assert aspect_size("square", 1024) == (1024, 1024)
    assert aspect_size("portrait", 1024) == (832, 1216)
    assert aspect_size("landscape", 1024) == (1216, 832)
    assert aspect_size("wide", 1024) == (1344, 768)


def test_sd1_aspects() -> None:
    assert aspect_size("square", 512) == (512, 512)
    assert aspect_size("portrait", 512) == (384, 576)
    assert aspect_size("landscape", 512) == (576, 384)
    assert aspect_size("wide", 512) == (640, 384)


@pytest.mark.parametrize("native", [64, 128, 256, 512, 768, 1024])
@pytest.mark.parametrize("aspect", list(ASPECTS))
def test_snapped_sizes_obey_the_rules(native: int, aspect: str) -> None:
    width, height = aspect_size(aspect, native)
    step = 64 if native >= 512 else 8
    assert width % step == 0 and height % step == 0
    assert MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE
    assert width * height <= native * native or (width == MIN_SIZE or height == MIN_SIZE)
    GenerationRequest(width=width, height=height).validate()
    # portrait and landscape are mirror images
    if aspect in ("portrait", "landscape"):
        other = "landscape" if aspect == "portrait" else "portrait"
        assert aspect_size(other, native) == (height, width)


def test_snap_any_ratio_and_errors() -> None:
    width, height = snap_size(1.0 / 3.0, 768)
    assert abs(width / height - 1 / 3) < 0.05
    with pytest.raises(ValueError, match="aspect ratio must be a positive number, got 0"):
        snap_size(0, 512)
    with pytest.raises(ValueError, match="native size must be at least 64, got 32"):
        snap_size(1.0, 32)
    with pytest.raises(ValueError, match="aspect 'tall' is not one of square, portrait, landscape, wide"):
        aspect_size("tall", 512)


# -- presets ----------------------------------------------------------------------------------


def test_builtin_presets() -> None:
    assert [p.name for p in BUILTIN_PRESETS] == ["Portrait", "Scene", "Quick", "Quality"]
    for preset in BUILTIN_PRESETS:
        assert clean_params(preset.params) == preset.params  # every built-in value is valid
    portrait = resolve(BUILTIN_PRESETS[0], 1024)
    assert (portrait["width"], portrait["height"]) == (832, 1216)
    assert "aspect" not in portrait
    quick = resolve(BUILTIN_PRESETS[2], 512)
    assert quick["steps"] < resolve(BUILTIN_PRESETS[3], 512)["steps"]
    assert "width" not in quick  # Quick keeps the current size


def test_clean_params_drops_bad_values() -> None:
    params = {
        "sampler": "Euler a", "schedule": "nonsense", "steps": 0, "cfg_scale": 5, "width": 70,
        "height": 512, "batch_size": True, "aspect": "wide", "prompt": "not a preset field",
    }
    assert clean_params(params) == {"sampler": "Euler a", "cfg_scale": 5.0, "height": 512, "aspect": "wide"}


def test_user_presets_saved_replaced_deleted_and_round_trip(tmp_path) -> None:
    settings = AppSettings()
    mine = make_preset("  My   look ", {"steps": 33, "aspect": "wide", "seed": 5})
    assert mine == Preset("My look", {"steps": 33, "aspect": "wide"})
    settings = with_user_preset(settings, mine)
    settings = with_user_preset(settings, make_preset("my LOOK", {"steps": 44}))
    assert [p.name for p in all_presets(settings)] == ["Portrait", "Scene", "Quick", "Quality", "my LOOK"]
    save_settings(settings, tmp_path / "settings.json")
    assert load_settings(tmp_path / "settings.json").user_presets == [Preset("my LOOK", {"steps": 44})]
    assert without_user_preset(settings, "My Look").user_presets == []
    with pytest.raises(PresetError, match="'quick' is a built-in preset"):
        make_preset("quick", {})
    with pytest.raises(PresetError, match="needs a name"):
        make_preset("   ", {})


# -- prompts ----------------------------------------------------------------------------------


def test_prefix_and_suffix() -> None:
    assert compose_prompt("masterpiece", "a cat", "4k, sharp") == "masterpiece, a cat, 4k, sharp"
    assert compose_prompt("", "a cat", "") == "a cat"
    assert compose_prompt("masterpiece,", "", " 4k ") == "masterpiece, 4k"
    full = compose_prompt("masterpiece", "a cat\non a mat", "4k")
    assert strip_affixes(full, "masterpiece", "4k") == "a cat\non a mat"
    assert strip_affixes("a dog", "masterpiece", "4k") == "a dog"


# -- worker helpers ---------------------------------------------------------------------------


def test_describe_error_names_the_problem() -> None:
    size = describe_error(RequestError("width", 70, "a multiple of 8 from 64 to 2048"))
    assert size.title == "These settings cannot be generated"
    assert "width = 70" in size.detail and "multiple of 8" in size.detail
    broken = describe_error(WeightsError("vae: missing weight 'x'"))
    assert broken.title == "The model could not be loaded" and "vae: missing weight" in broken.detail
    assert describe_error(ModelFolderError("no model.json")).title == "The model could not be loaded"
    assert describe_error(MemoryError()).title == "Out of memory"
    oom = RuntimeError("[metal::malloc] Attempting to allocate 40000000000 bytes")
    assert describe_error(oom).title == "Out of memory"
    full = HistoryError("could not record the image")
    full.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert describe_error(full).title == "The disk is full"
    assert describe_error(sqlite3.OperationalError("database or disk is full")).title == "The disk is full"
    assert describe_error(ValueError("odd")).detail == "ValueError: odd"


def test_request_params_are_json_without_images() -> None:
    request = GenerationRequest(prompt="a cat", seed=3, init_image=Image.new("RGB", (8, 8)))
    params = request_params(request)
    json.dumps(params)
    assert params["prompt"] == "a cat" and params["img2img"] is True
    assert "init_image" not in params and "latents" not in params


def test_progress_clock() -> None:
    now = [100.0]
    clock = ProgressClock(lambda: now[0])
    assert clock.seconds_left(0, 10) is None
    now[0] = 104.0
    assert clock.seconds_left(2, 10) == pytest.approx(16.0)
    assert clock.seconds_left(10, 10) == 0.0
