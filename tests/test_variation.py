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
    seeds, subseeds = [1234, 1235], [99, 100]
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
