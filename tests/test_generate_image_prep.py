"""Init images of every mode and masks, prepared for img2img and inpainting (mlx_sd.image_prep)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mlx_sd.image_prep import (
    binary_mask, latent_mask, prepare_init_image, prepare_mask, to_image, to_mask, to_rgb,
)


def rgb_of(image: Image.Image) -> np.ndarray:
    return np.asarray(to_rgb(image), dtype=np.int32)


def test_rgba_is_composited_over_white() -> None:
    image = Image.new("RGBA", (2, 1))
    image.putpixel((0, 0), (200, 0, 0, 0))  # fully transparent red
    image.putpixel((1, 0), (200, 0, 0, 128))  # half transparent red
    out = rgb_of(image)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert np.abs(out[0, 1] - [227, 127, 127]).max() <= 1  # 200*a + 255*(1-a), 255*(1-a), a = 128/255


def test_greyscale_with_alpha_and_palette_with_transparency() -> None:
    la = Image.new("LA", (1, 1), (0, 0))
    assert rgb_of(la)[0, 0].tolist() == [255, 255, 255]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    assert rgb_of(palette).tolist() == [[[0, 0, 255], [0, 255, 0]]]
    palette.info["transparency"] = 0  # index 0 becomes transparent
    assert rgb_of(palette).tolist() == [[[255, 255, 255], [0, 255, 0]]]


def test_greyscale_cmyk_and_bilevel() -> None:
    grey = Image.new("L", (1, 1), 77)
    assert rgb_of(grey)[0, 0].tolist() == [77, 77, 77]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert rgb_of(cmyk)[0, 0].tolist() == [255, 0, 0]
    assert rgb_of(Image.new("1", (1, 1), 1))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("via_png", [False, True])
def test_sixteen_bit_greyscale_is_scaled_not_clipped(via_png: bool) -> None:
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    if via_png:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        image = Image.open(io.BytesIO(buffer.getvalue()))
    assert image.mode.startswith("I")
    assert rgb_of(image)[0, :, 0].tolist() == [0, 4, 128, 255]
    assert rgb_of(Image.fromarray(values.astype(np.int32)))[0, :, 0].tolist() == [0, 4, 128, 255]  # mode "I"


def test_init_image_is_resized_to_the_request() -> None:
    image = Image.new("RGB", (50, 70), (255, 0, 0))
    array = prepare_init_image(image, 64, 48)
    assert array.shape == (48, 64, 3) and array.dtype == np.float32
    assert np.allclose(array, [1.0, 0.0, 0.0])
    same = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    assert np.array_equal(to_image(prepare_init_image(same, 64, 48)), np.asarray(same))  # no resize, exact


def test_mask_modes() -> None:
    rgba = Image.new("RGBA", (2, 1), (255, 255, 255, 255))
    rgba.putpixel((1, 0), (255, 255, 255, 0))  # transparent: keep
    assert np.asarray(to_mask(rgba)).tolist() == [[255, 0]]
    assert to_mask(Image.new("RGB", (1, 1), (255, 255, 255))).mode == "L"


def test_mask_blur_softens_only_the_edge() -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))  # repaint the right half
    sharp = prepare_mask(mask, 64, 64, blur=0)
    assert set(np.unique(sharp)) == {0.0, 1.0}
    soft = prepare_mask(mask, 64, 64, blur=4)
    assert soft.shape == (64, 64)
    assert 0.2 < soft[10, 31] < 0.5 < soft[10, 32] < 0.8  # the edge is a ramp
    assert (soft[:, :16] == 0).all() and (soft[:, 48:] == 1).all()  # far from the edge: unchanged
    assert binary_mask(soft)[:, :32].sum() == 0 and binary_mask(soft)[:, 32:].all()


def test_mask_is_resized_before_blurring() -> None:
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (8, 0, 16, 16))
    resized = prepare_mask(mask, 64, 32, blur=0)
    assert resized.shape == (32, 64) and resized[:, :28].max() < 0.05 and resized[:, 36:].min() > 0.95


def test_latent_mask_takes_the_top_left_pixel_of_each_block() -> None:
    mask = np.zeros((16, 16), np.float32)
    mask[0, 8] = 1.0
    mask[9, 1] = 1.0  # not a block's top-left pixel
    assert latent_mask(mask, 8).tolist() == [[0.0, 1.0], [0.0, 0.0]]
