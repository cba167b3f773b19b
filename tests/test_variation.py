"""Variation seeds (A1111's subseeds): the initial noise against A1111's rule written out in torch
(slerp of the two seeds' NV noises, `Resize seed from` centring), per-image variation seeds, the
infotext keys written and read back, and the request's checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_generate_models import levels_apart, model_folders, pipes, request  # noqa: F401

from mlx_sd.infotext import parse_infotext, request_from_infotext
from mlx_sd.noise import ImageNoise, PhiloxGenerator, SeedVariation, slerp
from mlx_sd.request import GenerationRequest, RequestError
from mlx_sd.variation import batch_changes, seed_variation, variation_parameters, with_resolved_variation_seed


def a1111_slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """processing.slerp as A1111 1.x computes it, for noises of A1111's per-image (c, h, w) shape."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def a1111_first_noise(shape, seed, subseed, strength, resize_hw=(0, 0)) -> torch.Tensor:
    """ImageRNG.first for one image with the NV generator: `shape` (c, h, w); `resize_hw` in latents."""
    def randn(s, size):
        return torch.from_numpy(PhiloxGenerator(s).randn(size)).double()

    noise_shape = shape if 0 in resize_hw else (shape[0], *resize_hw)
    noise = randn(seed, noise_shape)
    if strength:
        noise = a1111_slerp(strength, noise, randn(subseed, noise_shape))
    if noise_shape != shape:
        x = randn(seed, shape)  # the image generator's first draw
        dx, dy = (shape[2] - noise_shape[2]) // 2, (shape[1] - noise_shape[1]) // 2
        w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
        h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
        tx, ty = max(dx, 0), max(dy, 0)
        dx, dy = max(-dx, 0), max(-dy, 0)
        x[:, ty : ty + h, tx : tx + w] = noise[:, dy : dy + h, dx : dx + w]
        noise = x
    return noise


@pytest.mark.parametrize(
    ("strength", "resize_hw"),
    [(0.3, (0, 0)), (1.0, (0, 0)), (0.25, (5, 12)), (0.7, (13, 7)), (0.0, (11, 6)), (0.5, (9, 9))],
)
def test_initial_noise_is_a1111s_rule(strength: float, resize_hw: tuple[int, int]) -> None:
    shape = (4, 9, 10)  # (c, h, w): odd and even differences to the resized sizes above
    seeds, subseeds = [1234, 1235], [99, 1235]  # the second image's noises are parallel: the straight line
    variation = SeedVariation(tuple(subseeds), strength, None if 0 in resize_hw else resize_hw)
    noise = ImageNoise(seeds, (9, 10, 4), variation=variation)
    ours = np.array(noise.initial()).transpose(0, 3, 1, 2)
    for k in range(2):
        expected = a1111_first_noise(shape, seeds[k], subseeds[k], strength, resize_hw).numpy()
        np.testing.assert_allclose(ours[k], expected, atol=2e-6, rtol=0)
    # the sampler's draws continue the image seeds' streams after their full-size first draw
    following = np.array(noise()).transpose(0, 3, 1, 2)
    generator = PhiloxGenerator(seeds[0])
    generator.randn(shape)
    np.testing.assert_array_equal(following[0], generator.randn(shape))


def test_slerp_has_one_home_shared_with_animate() -> None:
    from mlx_sd import animate

    assert animate.slerp is slerp


def test_variation_seeds_follow_the_image_index() -> None:
    req = GenerationRequest(variation_seed=50, variation_strength=0.2, batch_size=2, batch_count=2)
    assert seed_variation(req, 2, 2, 8).seeds == (52, 53)
    assert variation_parameters(req, 3) == {"Variation seed": 53, "Variation seed strength": "0.2"}
    assert batch_changes(req, 2) == {"variation_seed": 52}
    plain = GenerationRequest(resize_seed_from=(512, 768))
    assert variation_parameters(plain, 0) == {"Seed resize from": "512x768"}
    assert seed_variation(plain, 0, 1, 8) == SeedVariation(seed_size=(96, 64))
    assert with_resolved_variation_seed(req.__class__(variation_strength=0.1), 77).variation_seed == 77
    assert with_resolved_variation_seed(GenerationRequest(), 77).variation_seed == -1  # unused: left alone


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"variation_strength": 1.5}, "variation_strength"),
        ({"variation_strength": float("nan")}, "variation_strength"),
        ({"variation_seed": -2}, "variation_seed"),
        ({"variation_seed": 2**64}, "variation_seed"),
        ({"resize_seed_from": (500, 512)}, "resize_seed_from"),
        ({"resize_seed_from": (512, 0)}, "resize_seed_from"),
        ({"resize_seed_from": (512,)}, "resize_seed_from"),
    ],
)
def test_bad_variation_fields_are_refused(changes: dict, field: str) -> None:
    with pytest.raises(RequestError) as caught:
        dataclasses.replace(GenerationRequest(), **changes).validate()
    assert caught.value.field == field


def test_generation_bends_the_noise_and_records_it(pipes) -> None:
    pipe = pipes["sd1"]
    plain = pipe.generate(request(batch_size=2))
    unchanged = pipe.generate(request(batch_size=2, variation_seed=300, variation_strength=0.0))
    assert [levels_apart(a, b) for a, b in zip(plain.images, unchanged.images)] == [0, 0]
    # strength 1: the variation seed's noise, and DPM++ 2M draws nothing more: seed 300's image
    full = pipe.generate(request(variation_seed=300, variation_strength=1.0))
    other = pipe.generate(request(seed=300))
    assert levels_apart(full.images[0], other.images[0]) <= 1
    varied = pipe.generate(request(batch_size=2, variation_seed=300, variation_strength=0.3))
    assert all(levels_apart(a, b) > 0 for a, b in zip(plain.images, varied.images))
    for k, text in enumerate(varied.infotexts):
        params = parse_infotext(text).params
        assert params["Variation seed"] == str(300 + k) and params["Variation seed strength"] == "0.3"
        back = request_from_infotext(text)
        assert (back.seed, back.variation_seed, back.variation_strength) == (7 + k, 300 + k, 0.3)
        again = pipe.generate(dataclasses.replace(request(), **{
            f: getattr(back, f) for f in ("seed", "variation_seed", "variation_strength")}))
        assert levels_apart(again.images[0], varied.images[k]) == 0


def test_a_random_variation_seed_is_drawn_and_recorded(pipes) -> None:
    result = pipes["sd1"].generate(request(variation_strength=0.2))
    seed = int(parse_infotext(result.infotexts[0]).params["Variation seed"])
    again = pipes["sd1"].generate(request(variation_seed=seed, variation_strength=0.2))
    assert levels_apart(result.images[0], again.images[0]) == 0


def test_seed_resize_from_is_written_and_read_back(pipes) -> None:
    result = pipes["sd1"].generate(request(width=64, height=96, resize_seed_from=(64, 64)))
    text = result.infotexts[0]
    assert "Seed resize from: 64x64" in text
    back = request_from_infotext(text)
    assert back.resize_seed_from == (64, 64) and back.variation_strength == 0.0
    # the noise differs from the plain 64x96 image's (its middle is seed 7's 64x64 noise)
    plain = pipes["sd1"].generate(request(width=64, height=96))
    assert levels_apart(result.images[0], plain.images[0]) > 0


def test_an_infotext_without_the_keys_means_no_variation() -> None:
    base = GenerationRequest(variation_seed=5, variation_strength=0.5, resize_seed_from=(512, 512))
    back = request_from_infotext("a cat\nSteps: 20, Seed: 3, Size: 512x512", base)
    assert back.variation_strength == 0.0 and back.resize_seed_from == (0, 0)


def test_cli_flags_reach_every_batch_and_bad_values_stop_in_one_line(capsys, model_folders, tmp_path) -> None:
    from cli.main import main
    from mlx_sd.image_metadata import read_infotext

    args = ["generate", "--model", str(model_folders["sd1"]), "a cube", "--steps", "2", "--width", "64",
            "--height", "64", "--seed", "5", "--batch-count", "2", "--output", str(tmp_path)]
    code = main(args + ["--variation-seed", "40", "--variation-strength", "0.25", "--resize-seed-from", "128x64"])
    out, err = capsys.readouterr()
    assert code == 0, err
    params = [parse_infotext(read_infotext(path)).params for path in out.split()]
    assert [(p["Seed"], p["Variation seed"], p["Variation seed strength"]) for p in params] == [
        ("5", "40", "0.25"), ("6", "41", "0.25")]
    assert params[0]["Seed resize from-1"] == "128" and params[0]["Seed resize from-2"] == "64"
    with pytest.raises(SystemExit) as stopped:  # a malformed value stops argument parsing
        main(args + ["--resize-seed-from", "128by64"])
    assert stopped.value.code == 2
    for bad in (["--variation-strength", "2"], ["--variation-seed", "-5", "--variation-strength", "0.1"]):
        assert main(args + bad) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 3 and "Traceback" not in err, err
    assert "WIDTHxHEIGHT" in err and "128by64" in err and "variation_strength = 2.0" in err


def test_api_keys_translate_and_come_back_in_info() -> None:
    from server.schema import Txt2ImgRequest
    from server.translate import ServerOptions, a1111_info, a1111_request

    payload = Txt2ImgRequest(subseed=40, subseed_strength=0.3, seed_resize_from_w=512, seed_resize_from_h=768)
    translated = a1111_request(payload, ServerOptions("demo"))
    req = translated.request
    assert (req.variation_seed, req.variation_strength, req.resize_seed_from) == (40, 0.3, (512, 768))
    assert "subseed_strength" not in translated.not_applied
    assert a1111_request(Txt2ImgRequest(seed_resize_from_w=512), ServerOptions("demo")).request.resize_seed_from == (0, 0)
    texts = ["a\nSteps: 3, Seed: 7, Variation seed: 40, Variation seed strength: 0.3",
             "a\nSteps: 3, Seed: 8, Variation seed: 41, Variation seed strength: 0.3"]
    info = a1111_info(req, [7, 8], texts, "m", None, ())
    assert (info["subseed"], info["all_subseeds"], info["subseed_strength"]) == (40, [40, 41], 0.3)
    assert (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (512, 768)
    plain = a1111_info(GenerationRequest(), [7], ["a\nSteps: 3, Seed: 7, Size: 64x64"], "m", None, ())
    assert (plain["all_subseeds"], plain["seed_resize_from_w"]) == ([7], -1)
