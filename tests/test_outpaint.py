"""Outpainting (mlx_sd.outpaint, --outpaint): the grown canvas and its mask, the noise fill, runs on
the tiny ordinary and 9-channel inpainting models that keep the old picture outside the mask, and
the refusals (not multiples of 8, no init image, beyond the maximum size) before any model runs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_generate_models import model_folders, pipes, request  # noqa: F401

from mlx_sd.image_prep import prepare_mask
from mlx_sd.outpaint import grown_canvas, outpaint_mask, outpainted, overlap
from mlx_sd.request import MAX_SIZE, RequestError


def picture(width: int = 64, height: int = 64) -> Image.Image:
    """A picture with structure: a gradient and a square."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (250, 240, 20)
    return Image.fromarray(pixels, "RGB")


def test_overlap_is_twice_the_blur_in_whole_latent_cells() -> None:
    assert [overlap(blur) for blur in (0, 1, 4, 5, 12)] == [8, 8, 8, 16, 24]


def test_mask_covers_the_new_sides_and_an_overlap_into_the_picture() -> None:
    mask = outpaint_mask(64, 48, (16, 0, 8, 0), covered=8) > 0
    assert mask.shape == (56, 80)
    assert mask[:, :24].all() and mask[:16].all()  # the new left and top strips plus 8 pixels
    assert not mask[16:, 24:].any()  # the rest of the picture, including its right and bottom edges
    assert outpaint_mask(16, 16, (8, 8, 0, 0), covered=24).all()  # a narrow picture is covered whole


def test_canvas_keeps_the_picture_and_fills_the_new_area_with_its_colours() -> None:
    pixels = np.asarray(picture(), np.float32) / 255
    canvas = grown_canvas(pixels, (0, 32, 16, 0))
    assert canvas.shape == (80, 96, 3) and canvas.dtype == np.float32
    np.testing.assert_array_equal(canvas[16:, :64], pixels)
    new = canvas[16:, 64:]
    assert 0.0 <= canvas.min() and canvas.max() <= 1.0
    assert new.std() > 0.01  # grain, not a flat colour
    # the smeared colours continue the picture's right edge: red near 1 there, green follows the rows
    assert abs(new[:, :4, 0].mean() - pixels[:, -1, 0].mean()) < 0.15
    np.testing.assert_array_equal(grown_canvas(pixels, (0, 32, 16, 0)), canvas)  # a fixed seed: repeatable


def test_outpainted_request_is_inpainting_on_the_grown_canvas() -> None:
    req = request(init_image=picture(), outpaint=(8, 16, 0, 24), mask_blur=4)
    req.validate()
    grown = outpainted(req, np.asarray(picture(), np.float32) / 255)
    assert (grown.width, grown.height, grown.outpaint) == (88, 88, (0, 0, 0, 0))
    assert grown.init_image.size == grown.mask.size == (88, 88)
    grown.validate()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"outpaint": (0, 12, 0, 0)}, "multiple of 8"),
        ({"outpaint": (0, -8, 0, 0)}, "multiple of 8"),
        ({"outpaint": (8, 8)}, "(left, right, top, bottom)"),
        ({"outpaint": (0, MAX_SIZE, 0, 0)}, f"at most {MAX_SIZE}x{MAX_SIZE}; 64x64 grows to {MAX_SIZE + 64}x64"),
        ({"outpaint": (0, 64, 0, 0), "init_image": None}, "give one"),
        ({"outpaint": (0, 64, 0, 0), "mask": Image.new("L", (64, 64))}, "no mask with outpaint"),
    ],
)
def test_bad_outpaint_requests_are_refused_in_one_line(changes: dict, message: str) -> None:
    req = request(**{"init_image": picture(), **changes})
    with pytest.raises(RequestError) as caught:
        req.validate()
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("family", ["sd1", "sd1-inpaint"])
def test_outpainting_keeps_the_picture_outside_the_mask_and_paints_the_new_area(pipes, family: str) -> None:
    sides = (0, 32, 16, 0)
    req = request(init_image=picture(), outpaint=sides, strength=0.9, mask_blur=2)
    result = pipes[family].generate(req)
    out = np.asarray(result.images[0], np.int32)
    assert out.shape == (80, 96, 3)
    assert "Size: 96x80" in result.infotexts[0]
    mask = prepare_mask(Image.fromarray(outpaint_mask(64, 64, sides, overlap(2))), 96, 80, 2)
    kept = mask[16:, :64] == 0
    assert kept.sum() > 1000
    np.testing.assert_array_equal(out[16:, :64][kept], np.asarray(picture(), np.int32)[kept])
    canvas = np.asarray(outpainted(req, np.asarray(picture(), np.float32) / 255).init_image, np.int32)
    assert np.abs(out[16:, 64:] - canvas[16:, 64:]).mean() > 2  # the new area was painted, not kept


def test_cli_outpaint_grows_the_image_and_refuses_bad_sides_with_exit_2(capsys, model_folders, tmp_path) -> None:
    from cli.main import main

    init = tmp_path / "in.png"
    picture().save(init)
    base = ["generate", "--model", str(model_folders["sd1"]), "a cube", "--steps", "2", "--output", str(tmp_path / "out")]
    assert main(base + ["--init-image", str(init), "--outpaint", "0,64,0,0"]) == 0
    (saved,) = capsys.readouterr().out.split()
    assert Image.open(saved).size == (128, 64)
    for bad in (["--init-image", str(init), "--outpaint", "0,60,0,0"], ["--init-image", str(init), "--outpaint", "left"]):
        with pytest.raises(SystemExit) as stopped:
            main(base + bad)
        assert stopped.value.code == 2
    assert main(base + ["--outpaint", "0,64,0,0"]) == 2
    assert main(base + ["--init-image", str(init), "--outpaint", f"0,{MAX_SIZE},0,0"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 4 and "Traceback" not in err, err
    assert "multiple of 8" in lines[0] and "LEFT,RIGHT,TOP,BOTTOM" in lines[1]
    assert "--init-image" in lines[2] and "grows to" in lines[3]
    assert not (tmp_path / "out").exists() or len(list((tmp_path / "out").iterdir())) == 1
