"""Hires fix end to end on the tiny models: the second pass equals a manual txt2img + resize + img2img
composition with the same seeds, latent upscaling hands torch's interpolation to the second pass, both
passes report progress and can be cancelled, and bad input is refused before any model runs."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlx_sd.hires import upscale_picture
from mlx_sd.request import RequestError
from mlx_sd.samplers import Cancelled
from mlx_sd.stepwise_conditioning import conditioning_schedule
from mlx_sd.prompt_schedule import prompt_schedule
from mlx_sd.upscalers import CompactConfig, SRVGGNetCompact
from test_generate_models import SIZE, model_folders, pipes, request  # noqa: F401

HIRES = SIZE * 2


def manual_hires(pipe, upscaler, **changes):
    """txt2img, each image upscaled to the hires size, then img2img of it with the image's seed."""
    first = pipe.generate(request(**changes))
    images = []
    for image, seed in zip(first.images, first.seeds):
        init = upscale_picture(image, (HIRES, HIRES), upscaler)
        second = request(**{**changes, "batch_size": 1}, init_image=init, width=HIRES, height=HIRES, seed=seed, steps=4, strength=0.6)
        images.append(pipe.generate(second).images[0])
    return images


@pytest.mark.parametrize("sampler, batch", [("Euler a", 1), ("DPM++ 2M", 1), ("Euler a", 2)])
def test_lanczos_hires_equals_txt2img_resize_img2img(pipes, sampler: str, batch: int) -> None:
    pipe = pipes["sd1"]
    hires = pipe.generate(request(
        sampler=sampler, batch_size=batch, hires_scale=2, hires_upscaler="lanczos", hires_steps=4, hires_denoise=0.6
    ))
    assert [image.size for image in hires.images] == [(HIRES, HIRES)] * batch
    expected = manual_hires(pipe, "Lanczos", sampler=sampler, batch_size=batch)
    # equal; a batch of 2 rounds the GEMMs' sums differently from one image alone (within a level)
    levels = [int(np.abs(np.asarray(a, int) - np.asarray(b, int)).max()) for a, b in zip(hires.images, expected)]
    assert max(levels) <= (batch > 1)
    assert "Hires upscale: 2, Hires steps: 4, Hires upscaler: Lanczos" in hires.infotexts[0]
    assert "Denoising strength: 0.6" in hires.infotexts[0] and "Size: 64x64" in hires.infotexts[0]


def test_upscaler_model_hires_equals_the_composition(pipes, monkeypatch) -> None:
    pipe = pipes["sd1"]
    network = SRVGGNetCompact(CompactConfig(features=4, convs=1, scale=2))
    mx.eval(network.parameters())
    monkeypatch.setattr(pipe, "read_upscaler", lambda name: network if name == "tiny-x2" else pytest.fail(name))
    hires = pipe.generate(request(hires_scale=2, hires_upscaler="tiny-x2", hires_steps=4, hires_denoise=0.6))
    assert np.array_equal(np.asarray(hires.images[0]), np.asarray(manual_hires(pipe, network)[0]))
    assert "Hires upscaler: tiny-x2" in hires.infotexts[0]


def decoded_latents(pipe, monkeypatch) -> list[np.ndarray]:
    seen: list[np.ndarray] = []
    real = pipe.codec.decode
    monkeypatch.setattr(pipe.codec, "decode", lambda latents, tiling=None: (seen.append(np.array(latents)), real(latents, tiling))[1])
    return seen


@pytest.mark.parametrize("name, mode, antialias", [("Latent", "bilinear", False), ("Latent (bicubic antialiased)", "bicubic", True)])
def test_latent_upscale_hands_torchs_interpolation_to_the_second_pass(pipes, monkeypatch, name, mode, antialias) -> None:
    pipe = pipes["sd1"]
    seen = decoded_latents(pipe, monkeypatch)
    pipe.generate(request())
    first = torch.from_numpy(seen[-1].transpose(0, 3, 1, 2))
    expected = F.interpolate(first, size=(HIRES // 8, HIRES // 8), mode=mode, antialias=antialias).numpy()
    # denoise 0 runs no step: the second pass's result is its start latent
    result = pipe.generate(request(hires_scale=2, hires_upscaler=name, hires_denoise=0.0))
    np.testing.assert_allclose(seen[-1].transpose(0, 3, 1, 2), expected, rtol=1e-5, atol=1e-5)
    assert result.images[0].size == (HIRES, HIRES)
    assert len(seen) == 2  # the latent modes decode only the result


def test_progress_counts_both_passes_and_cancel_works_in_the_second(pipes) -> None:
    pipe = pipes["sd1"]
    steps: list[tuple[int, int]] = []
    hires = request(hires_scale=2, hires_steps=4, hires_denoise=0.5)  # 3 + (int(0.5 * 4) + 1) steps
    pipe.generate(hires, on_progress=lambda p: steps.append((p.step, p.total)))
    assert steps == [(k, 6) for k in range(1, 7)]
    with pytest.raises(Cancelled):
        pipe.generate(hires, on_progress=lambda p: steps.append(p.step), cancel=lambda: len(steps) >= 6 + 4)
    assert steps[6:] == [1, 2, 3, 4]


def test_resize_crops_to_the_requested_size(pipes) -> None:
    result = pipes["sd1"].generate(request(width=64, height=96, hires_width=128, hires_height=128, hires_denoise=0.3))
    assert result.images[0].size == (128, 128) and "Hires resize: 128x128" in result.infotexts[0]


@pytest.mark.parametrize("changes, field, words", [
    ({"hires_scale": 40.0}, "hires_scale", "64x64 becomes 2560x2560 (at most 32.00x"),
    ({"hires_scale": 0.5}, "hires_scale", "from 64 to 2048"),
    ({"width": 512, "hires_width": 64, "hires_height": 2048}, "hires_width", "512x64 becomes"),
    ({"hires_scale": -1.0}, "hires_scale", "0 (no hires fix)"),
    ({"hires_scale": 2.0, "hires_sampler": "Nope"}, "hires_sampler", "one of DPM++ 2M, "),
    ({"hires_scale": 2.0, "hires_denoise": 1.5}, "hires_denoise", "from 0 to 1"),
    ({"hires_scale": 2.0, "hires_steps": -1}, "hires_steps", "0 (as many"),
    ({"hires_scale": 2.0, "hires_width": 100}, "hires_width", "multiple of 8"),
    ({"hires_scale": 2.0, "hires_upscaler": "4x-Missing"}, "hires_upscaler", "reads no upscaler models"),
])
def test_bad_hires_input_is_one_line_before_any_work(pipes, changes, field, words) -> None:
    with pytest.raises(RequestError) as info:
        pipes["sd1"].generate(request(**changes), on_progress=pytest.fail)
    assert info.value.field == field and words in str(info.value) and "\n" not in str(info.value)


def test_an_unreadable_upscaler_model_is_named(pipes, monkeypatch) -> None:
    def read(name):
        raise ValueError(f"unknown upscaler {name!r}: available are Lanczos, Nearest")

    monkeypatch.setattr(pipes["sd1"], "read_upscaler", read)
    with pytest.raises(RequestError, match="a readable upscaler model .unknown upscaler '4x-Missing'"):
        pipes["sd1"].generate(request(hires_scale=2.0, hires_upscaler="4x-Missing"), on_progress=pytest.fail)


def test_the_second_pass_schedules_prompts_by_a1111s_hires_rules() -> None:
    # whole numbers count from the first pass's start (5 - 3), fractions above 1 into the hires pass ((1.25 - 1) * 4)
    second = request(prompt="[cat:dog:5] [red:blue:1.25]", steps=4)
    schedule = conditioning_schedule(second, lambda prompt, negative: prompt, first_pass_steps=3)
    assert schedule == prompt_schedule(second.prompt, 3, 4) == [(1, "cat red"), (2, "cat blue"), (4, "dog blue")]
