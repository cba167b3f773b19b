"""Pipeline.generate refuses bad requests before any model runs, with a RequestError naming the field,
the value received and what is allowed."""

from __future__ import annotations

import mlx_sd  # noqa: F401  (binds OpenBLAS before mlx.core)

import numpy as np
import pytest
from PIL import Image

from mlx_sd.generation import plan, random_seed, resolve_seed
from mlx_sd.request import MAX_SEED, RANDOM_SEED, GenerationRequest, RequestError
from test_generate_models import model_folders, pipes, request  # noqa: F401

RGB = Image.new("RGB", (64, 64), (10, 20, 30))


class Forbidden:
    """Stands in for a model that must not run."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"{self.name} ran for a request that should have been refused")

    encode = decode = __call__


@pytest.fixture
def guarded(pipes, monkeypatch):
    """The SD1 and SDXL pipelines with every model replaced by one that fails when called."""
    for pipe in (pipes["sd1"], pipes["sdxl"]):
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            monkeypatch.setattr(pipe, name, Forbidden(name))
        monkeypatch.setattr(pipe, "_prompt_encoder", None)
        monkeypatch.setattr(pipe, "_codec", None)
    return pipes


BAD = [
    # (field, changes, words the message must contain)
    ("width", dict(width=100), ["width = 100", "multiple of 8 from 64 to 2048"]),
    ("height", dict(height=4096), ["height = 4096", "multiple of 8"]),
    ("width", dict(width=56), ["width = 56", "from 64"]),
    ("steps", dict(steps=0), ["steps = 0", "from 1 to 1000"]),
    ("cfg_scale", dict(cfg_scale=-1.0), ["cfg_scale = -1.0", "from 0 to 100"]),
    ("seed", dict(seed=-2), ["seed = -2", "-1 (random)"]),
    ("batch_size", dict(batch_size=0), ["batch_size = 0", "from 1 to 64"]),
    ("batch_count", dict(batch_count=65), ["batch_count = 65", "from 1 to 64"]),
    ("clip_skip", dict(clip_skip=0), ["clip_skip = 0", "from 1 to 12"]),
    ("clip_skip", dict(clip_skip=4), ["clip_skip = 4", "from 1 to 3 for this model's text_encoder"]),
    ("strength", dict(strength=1.5, init_image=RGB), ["strength = 1.5", "from 0 to 1"]),
    ("mask_blur", dict(mask_blur=-1), ["mask_blur = -1", "from 0 to 64"]),
    ("sampler", dict(sampler="Euler b"), ["sampler = 'Euler b'", "one of DPM++ 2M", "Euler a", "LCM"]),
    ("schedule", dict(schedule="Quadratic"), ["schedule = 'Quadratic'", "Karras", "SGM Uniform"]),
    ("steps", dict(sampler="LCM", steps=60), ["steps = 60", "LCM", "at most 50"]),
    ("mask", dict(mask=Image.new("L", (64, 64))), ["mask", "needs an init_image"]),
    ("mask", dict(init_image=RGB, mask=Image.new("L", (32, 64))), ["mask = '32x64'", "the size of init_image (64x64)"]),
    ("init_image", dict(init_image=np.zeros((64, 64, 3))), ["init_image = 'a ndarray'", "PIL.Image.Image"]),
    ("mask", dict(init_image=RGB, mask="mask.png"), ["mask = 'a str'", "PIL.Image.Image"]),
    ("latents", dict(latents=np.zeros((1, 4, 4, 4), np.float32)), ["shape (1, 4, 4, 4)", "(1, 4, 8, 8)"]),
    ("latents", dict(batch_size=2, latents=np.zeros((1, 4, 8, 8), np.float32)), ["(2, 4, 8, 8)"]),
    ("latents", dict(latents=np.full((1, 4, 8, 8), np.nan, np.float32)), ["NaN or inf", "finite numbers"]),
    ("latents", dict(latents=[[0.0] * 8] * 8), ["latents = 'a list'", "a numpy array"]),
    ("cfg_scale", dict(cfg_scale="7"), ["cfg_scale = '7'", "a number from 0 to 100"]),
    ("strength", dict(strength=None, init_image=RGB), ["strength = None", "a number from 0 to 1"]),
]


@pytest.mark.parametrize("field, changes, words", BAD, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD)])
def test_bad_request_is_refused_before_any_model_runs(guarded, field: str, changes: dict, words: list[str]) -> None:
    progress = []
    with pytest.raises(RequestError) as caught:
        guarded["sd1"].generate(request(**changes), on_progress=progress.append)
    assert caught.value.field == field
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))
    assert progress == []


def test_clip_skip_limit_follows_the_model(guarded) -> None:
    # SDXL's encoders start from the penultimate layer: one fewer layer to skip back than SD1's
    with pytest.raises(RequestError, match=r"clip_skip = 3 .*from 1 to 2 for this model's text_encoder"):
        guarded["sdxl"].generate(request(clip_skip=3))


def test_not_a_request(guarded) -> None:
    with pytest.raises(TypeError, match="expected a GenerationRequest, got dict"):
        guarded["sd1"].generate({"prompt": "a cat"})


def test_names_are_matched_case_insensitively_and_reported_canonically(pipes) -> None:
    p = plan(pipes["sd1"].config, request(sampler="dpm++ 2m", schedule="KARRAS"))
    assert (p.request.sampler, p.request.schedule, p.sampler.name) == ("DPM++ 2M", "Karras", "DPM++ 2M")
    assert len(p.sigmas) == 4  # 3 steps and the final 0


def test_strength_picks_the_tail_of_the_schedule(pipes) -> None:
    config = pipes["sd1"].config
    full = plan(config, request(steps=20)).sigmas
    tail = plan(config, request(steps=20, init_image=RGB, strength=0.75)).sigmas
    assert len(tail) == 17 and np.array_equal(tail, full[4:])  # A1111: 16 steps from sigmas[4]


def test_unreadable_init_image(guarded, tmp_path) -> None:
    path = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
    path.write_bytes(path.read_bytes()[:60])  # Pillow opens the header lazily, the pixels are gone
    with pytest.raises(RequestError, match=r"init_image = 'a RGB image Pillow cannot convert .*a readable image"):
        guarded["sd1"].generate(request(init_image=Image.open(path)))


def test_one_seed_rule_for_every_caller() -> None:
    """-1 becomes a random seed that validation accepts; every other seed, 0 included, is kept."""
    drawn = {resolve_seed(RANDOM_SEED) for _ in range(20)} | {random_seed() for _ in range(20)}
    assert len(drawn) > 1 and all(0 <= seed <= MAX_SEED for seed in drawn)
    for seed in drawn:
        GenerationRequest(seed=seed).validate()
    assert resolve_seed(0) == 0 and resolve_seed(MAX_SEED) == MAX_SEED
    GenerationRequest(seed=MAX_SEED + 1).validate()  # the seed of image 2 of a run from MAX_SEED
    with pytest.raises(RequestError, match=f"from 0 to {2**64 - 2}"):
        GenerationRequest(seed=2**64 - 1, batch_size=2).validate()
