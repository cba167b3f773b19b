"""Tiled upscaling equals the whole-image run: exactly where the network sees no further than the
overlap, and within 1/255 away from the image border for a full-size ESRGAN, which sees further."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_sd.upscalers import CompactConfig, RRDBNetConfig, build_upscaler, upscale_array

LEVEL = 1 / 255


def _image(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(5).random((height, width, 3), dtype=np.float32)


# Without dense blocks an RRDBNet sees about 4 pixels around each low-resolution pixel: 16 of the
# input's after a 4x pixel unshuffle, within the 20-pixel overlap.
@pytest.mark.parametrize("config", [
    RRDBNetConfig(features=8, blocks=0),
    RRDBNetConfig(features=8, blocks=0, unshuffle=2),  # tiles must keep unshuffle cells whole
    RRDBNetConfig(features=8, blocks=0, unshuffle=4),
    CompactConfig(features=8, convs=2, scale=2),
], ids=["x4", "x2plus", "x1-unshuffle4", "compact-x2"])
def test_small_networks_tile_exactly(config):
    mx.random.seed(0)
    model = build_upscaler(config)
    image = _image(61, 50)  # not a multiple of the tile, nor of the unshuffle factor
    whole = upscale_array(model, config.scale, image, tile=0)
    assert whole.shape == (61 * config.scale, 50 * config.scale, 3)
    calls = []
    tiled = upscale_array(model, config.scale, image, tile=16, overlap=20, progress=lambda *a: calls.append(a))
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert calls[-1] == (16, 16) and len(calls) == 16  # 4 rows x 4 columns of tiles


@pytest.mark.slow
def test_full_size_esrgan_tiles_within_one_level_away_from_the_border():
    mx.random.seed(1)
    config = RRDBNetConfig()  # RealESRGAN_x4plus's shape: its receptive field is far wider than the overlap
    model = build_upscaler(config)
    image = _image(96, 80)
    whole = upscale_array(model, config.scale, image, tile=0)
    tiled = upscale_array(model, config.scale, image, tile=48, overlap=16)
    margin = 4 * config.scale
    inner = (slice(margin, -margin), slice(margin, -margin))
    assert np.abs(tiled[inner] - whole[inner]).max() <= LEVEL
    assert 0.01 < np.abs(whole).mean() < 10  # image-like values, where one level is a meaningful bound


def test_a_tile_larger_than_the_image_runs_it_whole():
    model = build_upscaler(CompactConfig(features=4, convs=1, scale=2))
    image = _image(8, 6)
    np.testing.assert_array_equal(upscale_array(model, 2, image, tile=64), upscale_array(model, 2, image, tile=0))


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (1, 5)])
def test_pictures_smaller_than_the_unshuffle_cell_upscale(size):
    config = RRDBNetConfig(features=4, blocks=0, unshuffle=4)
    out = upscale_array(build_upscaler(config), config.scale, _image(*size), tile=0)
    assert out.shape == (*size, 3) and np.isfinite(out).all()
