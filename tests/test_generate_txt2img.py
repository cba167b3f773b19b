"""Pipeline.generate, txt2img: every family's output, seeds, batches, the request's latents, CFG,
cancellation, progress previews, SDXL micro-conditioning, low-memory mode and infotext."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from model_folders import write_random_model
from test_generate_models import (  # noqa: F401
    CONFIGS,
    SIZE,
    CountingUNet,
    levels_apart,
    model_folders,
    pipes,
    pixels,
    request,
)

from mlx_sd import device
from mlx_sd.cpu import kernels as cpu_kernels
from mlx_sd.config import SourceInfo
from mlx_sd.infotext import parse_infotext, request_from_infotext
from mlx_sd.noise import ImageNoise
from mlx_sd.pipeline import Pipeline
from mlx_sd.samplers import Cancelled


@pytest.fixture
def counted(pipes):
    """Pipelines whose UNet calls are counted; the real UNet is put back afterwards."""
    originals = {family: pipe.unet for family, pipe in pipes.items()}
    for pipe in pipes.values():
        pipe.unet = CountingUNet(pipe.unet)
    yield pipes
    for family, pipe in pipes.items():
        pipe.unet = originals[family]


@pytest.mark.parametrize("family", list(CONFIGS))
def test_every_family_makes_rgb_images_of_the_requested_size(pipes, family: str) -> None:
    result = pipes[family].generate(request(width=64, height=96, batch_size=2, batch_count=2))
    assert len(result.images) == len(result.seeds) == len(result.infotexts) == 4
    assert result.seeds == [7, 8, 9, 10]
    for image in result.images:
        assert image.mode == "RGB" and image.size == (64, 96)
        values = pixels(image)
        assert values.std() > 0.01  # an image, not a constant
    assert result.peak_memory_bytes > 0
    assert {"text_encoders", "sampling", "vae_decode", "total"} <= set(result.timings)
    print(f"\n{family}: 4 images of 64x96, 3 steps: {result.timings['total']:.2f} s, "
          f"peak {result.peak_memory_bytes / 1e6:.0f} MB")


def test_same_seed_same_image_different_seed_different_image(pipes) -> None:
    pipe = pipes["sd1"]
    for sampler in ("DPM++ 2M", "Euler a"):  # deterministic and stochastic
        first = pipe.generate(request(sampler=sampler)).images[0]
        again = pipe.generate(request(sampler=sampler)).images[0]
        other = pipe.generate(request(sampler=sampler, seed=8)).images[0]
        assert np.array_equal(pixels(first), pixels(again)), sampler
        assert np.abs(pixels(first) - pixels(other)).mean() > 0.01, sampler


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a"])
def test_batch_item_k_equals_a_single_run_with_seed_plus_k(pipes, sampler: str) -> None:
    pipe = pipes["sdxl"]
    batch = pipe.generate(request(sampler=sampler, seed=100, batch_size=2, batch_count=2))
    assert batch.seeds == [100, 101, 102, 103]
    for k in (1, 3):
        single = pipe.generate(request(sampler=sampler, seed=100 + k))
        assert single.seeds == [100 + k]
        # batched and single UNet calls may round differently in the last bit, never visibly
        assert levels_apart(batch.images[k], single.images[0]) <= 1


def test_random_seed_is_resolved_and_reported(pipes) -> None:
    result = pipes["sd1"].generate(request(seed=-1, batch_size=2))
    seed = result.seeds[0]
    assert 0 <= seed < 2**32 and result.seeds == [seed, seed + 1]
    assert [parse_infotext(t).params["Seed"] for t in result.infotexts] == [str(seed), str(seed + 1)]
    again = pipes["sd1"].generate(request(seed=seed + 1))
    assert levels_apart(again.images[0], result.images[1]) <= 1  # batch of 2 vs batch of 1


def test_seed_zero_is_a_seed_not_random(pipes) -> None:
    assert pipes["sd1"].generate(request(seed=0)).seeds == [0]


def test_request_latents_replace_the_seeded_noise(pipes) -> None:
    pipe = pipes["sd1"]
    seeded = pipe.generate(request(seed=5, batch_size=2))
    noise = np.array(ImageNoise([5, 6], (8, 8, 4)).initial()).transpose(0, 3, 1, 2)  # NHWC -> NCHW
    same = pipe.generate(request(seed=5, batch_size=2, latents=noise))
    for a, b in zip(seeded.images, same.images):
        assert levels_apart(a, b) <= 1
    other = np.random.default_rng(0).standard_normal(noise.shape).astype(np.float32)
    changed = pipe.generate(request(seed=5, batch_size=2, latents=other))
    assert np.abs(pixels(changed.images[0]) - pixels(seeded.images[0])).mean() > 0.01


def test_cfg_one_makes_half_the_unet_work(counted) -> None:
    pipe = counted["sdxl"]
    pipe.generate(request(cfg_scale=7.0, batch_size=2))
    with_cfg = list(pipe.unet.batches)
    pipe.unet.batches.clear()
    pipe.generate(request(cfg_scale=1.0, batch_size=2))
    assert with_cfg == [4, 4, 4]  # negative and positive rows in one call per step
    assert pipe.unet.batches == [2, 2, 2]


def test_cancel_stops_within_one_step_and_returns_nothing(counted) -> None:
    pipe = counted["sd1"]
    progress = []
    with pytest.raises(Cancelled):
        pipe.generate(request(steps=10), on_progress=progress.append, cancel=lambda: len(progress) >= 1)
    assert len(pipe.unet.batches) == 1 and len(progress) == 1

    pipe.unet.batches.clear()
    with pytest.raises(Cancelled):
        pipe.generate(request(steps=10), cancel=lambda: True)
    assert pipe.unet.batches == []


def test_cancel_in_the_second_batch(counted) -> None:
    pipe = counted["sd1"]
    progress = []
    with pytest.raises(Cancelled):
        pipe.generate(
            request(steps=3, batch_count=3), on_progress=progress.append,
            cancel=lambda: len(progress) >= 4,
        )
    assert len(pipe.unet.batches) == 4  # three steps of batch 1, one of batch 2


def test_progress_and_preview_after_every_step(pipes, monkeypatch) -> None:
    pipe = pipes["sd1"]
    decoded = []
    codec = pipe.codec
    real_decode = codec.decode
    monkeypatch.setattr(codec, "decode", lambda latents, tiling=None: (decoded.append(np.array(latents)), real_decode(latents, tiling))[1])
    progress = []
    pipe.generate(request(sampler="Euler", steps=4, batch_count=2, width=64, height=80), on_progress=progress.append)
    assert [(p.step, p.total, p.batch_index, p.batch_count) for p in progress] == [
        (s, 4, b, 2) for b in range(2) for s in range(1, 5)
    ]
    assert all(p.preview.size == (8, 10) and p.preview.mode == "RGB" for p in progress)
    # Euler's last step to sigma 0 returns the prediction itself: the last preview is its latent's
    for batch in range(2):
        expected = np.asarray(pipe.preview.image(decoded[batch][0]))
        assert np.array_equal(np.asarray(progress[4 * batch + 3].preview), expected)
    assert not np.array_equal(np.asarray(progress[0].preview), np.asarray(progress[3].preview))


def test_sdxl_micro_conditioning_and_refiner_aesthetic_score(pipes, monkeypatch) -> None:
    seen = {}
    for family in ("sdxl", "sdxl-refiner"):
        pipe = pipes[family]
        real = pipe.unet

        def spy(sample, t, context, text_embeds=None, time_ids=None, _real=real, _family=family):
            seen[_family] = (np.array(time_ids), np.array(text_embeds))
            return _real(sample, t, context, text_embeds=text_embeds, time_ids=time_ids)

        monkeypatch.setattr(pipe, "unet", spy)
        pipe.generate(request(width=64, height=96, steps=1))
    time_ids, text_embeds = seen["sdxl"]
    assert time_ids.tolist() == [[96, 64, 0, 0, 96, 64]] * 2  # (h, w, top, left, h, w); negative row first
    assert not text_embeds[0].any() and text_embeds[1].any()  # empty negative prompt: zero pooled (SDXL base)
    time_ids, _ = seen["sdxl-refiner"]
    assert time_ids.tolist() == [[96, 64, 0, 0, 2.5], [96, 64, 0, 0, 6.0]]


def test_clip_skip_changes_the_conditioning(pipes) -> None:
    pipe = pipes["sd1"]
    a = pipe.generate(request()).images[0]
    b = pipe.generate(request(clip_skip=2)).images[0]
    assert np.abs(pixels(a) - pixels(b)).mean() > 0.001


def test_low_memory_releases_text_encoders_before_the_unet(model_folders) -> None:
    pipe = Pipeline.load(model_folders["sdxl"])
    normal = pipe.generate(request())
    real = pipe.unet
    encoders_at_unet_time = []

    def spy(*args, **kwargs):
        encoders_at_unet_time.append((pipe.text_encoder, pipe.text_encoder_2))
        return real(*args, **kwargs)

    pipe.unet = spy
    low = pipe.generate(request(low_memory=True))
    assert encoders_at_unet_time and all(pair == (None, None) for pair in encoders_at_unet_time)
    assert pipe.text_encoder is None and pipe.text_encoder_2 is None
    assert np.array_equal(pixels(low.images[0]), pixels(normal.images[0]))
    # reloaded from the folder when next needed
    again = pipe.generate(request())
    assert pipe.text_encoder is not None and pipe.text_encoder_2 is not None
    assert np.array_equal(pixels(again.images[0]), pixels(normal.images[0]))


def test_infotext_of_every_image(tmp_path: Path) -> None:
    config = dataclasses.replace(
        CONFIGS["sd1"], source=SourceInfo(name="tiny-v1.safetensors", sha256="0123456789ABCDEF" * 4)
    )
    write_random_model(tmp_path / "tiny", config)
    pipe = Pipeline.load(tmp_path / "tiny")
    req = request(
        prompt="a (red:1.2) circle, studio", negative_prompt="blurry", sampler="euler a", schedule="karras",
        cfg_scale=6.5, seed=41, batch_size=2, clip_skip=2, width=64, height=72,
    )
    result = pipe.generate(req)
    for seed, text in zip((41, 42), result.infotexts):
        info = parse_infotext(text)
        assert info.prompt == "a (red:1.2) circle, studio" and info.negative_prompt == "blurry"
        assert info.params == {
            "Steps": "3", "Sampler": "Euler a", "Schedule type": "Karras", "CFG scale": "6.5", "Seed": str(seed),
            "Size-1": "64", "Size-2": "72", "Model hash": "0123456789", "Model": "tiny-v1", "Clip skip": "2",
            "RNG": "NV", "Version": info.params["Version"],
        }
        back = request_from_infotext(text, base=req)
        assert dataclasses.replace(back, seed=41) == dataclasses.replace(req, sampler="Euler a", schedule="Karras")
    # a model converted without a source name is named after its folder
    copy = shutil.copytree(tmp_path / "tiny", tmp_path / "my-model")
    text = (copy / "model.json").read_text().replace('"tiny-v1.safetensors"', '""')
    (copy / "model.json").write_text(text)
    assert parse_infotext(Pipeline.load(copy).generate(request(steps=1)).infotexts[0]).params["Model"] == "my-model"


@pytest.mark.skipif(
    not cpu_kernels.bf16_products() or device.current_device() != "cpu", reason="bfloat16 products: CPUs with AVX512_BF16"
)
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_bfloat16_products_make_nearly_the_float32_image(model_folders, pipes, family: str, monkeypatch) -> None:
    flags = []
    real = cpu_kernels.conv_taps
    monkeypatch.setattr(cpu_kernels, "conv_taps", lambda *args: flags.append(args[-1]) or real(*args))
    pipe = Pipeline.load(model_folders[family], precision="bfloat16")
    assert pipe.precision == "bfloat16"
    rounded = pipe.generate(request()).images[0]
    assert flags and all(flags)  # every convolution multiplied in bfloat16
    flags.clear()
    exact = pipes[family].generate(request()).images[0]
    assert flags and not any(flags)  # and the float32 pipeline beside it did not
    assert 0 < levels_apart(rounded, exact) <= 12, levels_apart(rounded, exact)
    assert pipes[family].cpu.products == "float32"  # each pipeline has its own precision


def test_an_unknown_or_impossible_precision_is_refused_before_loading(model_folders, monkeypatch) -> None:
    with pytest.raises(ValueError, match="precision 'float16' is not one of float32, bfloat16"):
        Pipeline.load(model_folders["sd1"], precision="float16")
    monkeypatch.setattr(cpu_kernels, "bf16_products", lambda: False)
    if device.current_device() == "cpu":
        with pytest.raises(ValueError, match="AVX512_BF16"):
            Pipeline.load(Path("/nonexistent"), precision="bfloat16")
