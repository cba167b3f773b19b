"""Hires fix's latent upscale modes against torch's `F.interpolate` with A1111's mode and antialias,
and the hires size rules."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlx_sd.hires import LATENT_UPSCALE_MODES, HiresSize, hires_size, upscale_latents
from mlx_sd.request import GenerationRequest

# (height, width) -> (height, width): up by 2, 1.5 and odd factors, down, and unchanged
SIZES = [((8, 8), (16, 16)), ((8, 12), (12, 18)), ((7, 9), (13, 20)), ((16, 12), (9, 7)), ((8, 8), (8, 8)), ((64, 64), (96, 96))]


@pytest.mark.parametrize("name", list(LATENT_UPSCALE_MODES))
@pytest.mark.parametrize("sizes", SIZES, ids=str)
def test_latent_modes_match_torch_interpolate(name: str, sizes) -> None:
    (h, w), (oh, ow) = sizes
    mode, antialias = LATENT_UPSCALE_MODES[name]
    latents = np.random.default_rng(h * 100 + ow).standard_normal((2, 4, h, w)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(latents), size=(oh, ow), mode=mode, antialias=antialias).numpy()
    found = upscale_latents(mx.array(latents.transpose(0, 2, 3, 1)), oh, ow, name)
    np.testing.assert_allclose(np.array(found).transpose(0, 3, 1, 2), expected, rtol=1e-5, atol=1e-5)


def test_nearest_picks_torchs_pixels_at_awkward_ratios() -> None:
    # float32 index arithmetic: at 3 -> 10 a float64 floor would pick another pixel for some outputs
    for n_in, n_out in [(3, 10), (7, 11), (13, 29), (96, 144), (5, 3)]:
        x = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, 1, n_in)
        for name in ("Latent (nearest)", "Latent (nearest-exact)"):
            mode = LATENT_UPSCALE_MODES[name][0]
            expected = F.interpolate(x, size=(1, n_out), mode=mode).numpy().ravel()
            found = np.array(upscale_latents(mx.array(x.numpy().reshape(1, 1, n_in, 1)), 1, n_out, name)).ravel()
            assert found.tolist() == expected.tolist(), (name, n_in, n_out)


def hires(**changes) -> GenerationRequest:
    return dataclasses.replace(GenerationRequest(width=512, height=768), **changes)


def test_hires_size_follows_a1111() -> None:
    assert hires_size(hires(hires_scale=2)) == HiresSize(1024, 1536)
    assert hires_size(hires(hires_scale=1.3)) == HiresSize(664, 992)  # int(665.6), int(998.4) floored to 8
    assert hires_size(hires(hires_width=1024)) == HiresSize(1024, 1536)
    assert hires_size(hires(hires_height=1152)) == HiresSize(768, 1152)
    # both given: cover 1024x1024 with the 2:3 first pass (1024x1536), crop 64 latent rows
    size = hires_size(hires(hires_width=1024, hires_height=1024))
    assert size == HiresSize(1024, 1536, 0, 64) and size.final(8) == (1024, 1024)
    assert hires_size(hires(hires_scale=2, hires_width=1024, hires_height=1024)) == size  # the resize wins


def test_crop_takes_the_centre_with_the_odd_cell_at_the_end() -> None:
    latents = mx.arange(10)[None, :, None, None]
    cropped = HiresSize(8, 80, 0, 3).crop(latents)
    assert np.array(cropped).ravel().tolist() == [1, 2, 3, 4, 5, 6, 7]
