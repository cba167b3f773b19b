"""`mlx-sd upscale`: models from the library or a file, classic filters, A1111's fields added to the
picture's own parameters, never overwriting, and one-line refusals before any work."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from PIL import Image
from safetensors.numpy import save_file

from cli.main import main
from cli.upscale import add_postprocess
from mlx_sd.image_metadata import read_infotext, save_image
from mlx_sd.infotext import parse_infotext
from mlx_sd.upscalers import CompactConfig, build_upscaler

INFOTEXT = "a red circle\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x48"


@pytest.fixture
def picture(tmp_path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return save_image(Image.fromarray(pixels), tmp_path / "in" / "pic.png", INFOTEXT, durable=True)


def _write_compact(path: Path) -> None:
    """A tiny 2x compact model, saved with torch's layout (convolutions as out, in, kh, kw)."""
    mx.random.seed(0)
    model = build_upscaler(CompactConfig(features=4, convs=1, scale=2))
    weights = {k: np.array(v.transpose(0, 3, 1, 2) if v.ndim == 4 else v) for k, v in tree_flatten(model.parameters())}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path))


def _run(capsys, *args: str) -> tuple[int, list[str], str]:
    code = main(["upscale", *args])
    out, err = capsys.readouterr()
    return code, out.split(), err


def test_lanczos_keeps_the_parameters_and_adds_the_postprocess_fields(tmp_path, picture, capsys):
    code, paths, _ = _run(capsys, str(picture), "--upscaler", "lanczos", "--scale", "2.5",
                          "--output", str(tmp_path / "out"), "--library", str(tmp_path / "lib"))
    assert code == 0 and paths == [str(tmp_path / "out" / "pic-2.5x.png")]
    with Image.open(paths[0]) as image:
        assert image.size == (160, 120)
    parsed = parse_infotext(read_infotext(paths[0]))
    assert parsed.prompt == "a red circle" and parsed.negative_prompt == "blurry"
    assert parsed.params["Seed"] == "5"
    assert parsed.params["Postprocess upscaler"] == "Lanczos" and parsed.params["Postprocess upscale by"] == "2.5"


def test_a_library_model_by_name_and_no_overwriting(tmp_path, picture, capsys):
    _write_compact(tmp_path / "lib" / "upscalers" / "tiny-2x.safetensors")
    args = (str(picture), "--upscaler", "tiny-2x", "--scale", "2", "--output", str(tmp_path / "out"),
            "--library", str(tmp_path / "lib"), "--tile", "16")
    first = _run(capsys, *args)
    second = _run(capsys, *args)
    assert first[0] == second[0] == 0
    assert [Path(p).name for p in first[1] + second[1]] == ["pic-2x.png", "pic-2x-2.png"]
    with Image.open(first[1][0]) as one, Image.open(second[1][0]) as two:
        assert one.size == (128, 96) and np.array_equal(np.asarray(one), np.asarray(two))
    assert "Postprocess upscaler: tiny-2x, Postprocess upscale by: 2" in read_infotext(first[1][0])


def test_a_model_file_by_path_runs_until_the_picture_is_large_enough(tmp_path, picture, capsys):
    model = tmp_path / "models" / "tiny.safetensors"
    _write_compact(model)
    code, paths, err = _run(capsys, str(picture), "--upscaler", str(model), "--scale", "3",
                            "--output", str(tmp_path / "out"), "--library", str(tmp_path / "lib"))
    assert code == 0 and "SRVGGNetCompact" in err
    with Image.open(paths[0]) as image:
        assert image.size == (192, 144)  # two 2x passes, then Lanczos down to 3x


def _refused(capsys, tmp_path, *args: str) -> str:
    code, paths, err = _run(capsys, *args, "--output", str(tmp_path / "out"), "--library", str(tmp_path / "lib"))
    assert code == 1 and paths == [] and not (tmp_path / "out").exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlx-sd upscale: error: ")
    return lines[0]


def test_an_unknown_upscaler_lists_the_available_names(tmp_path, picture, capsys):
    _write_compact(tmp_path / "lib" / "upscalers" / "4x-Mine.pth.safetensors")
    line = _refused(capsys, tmp_path, str(picture), "--upscaler", "UltraSharp")
    assert "'UltraSharp'" in line and "Lanczos, Nearest, 4x-Mine.pth" in line


def test_a_picture_too_large_is_refused_before_any_work(tmp_path, picture, capsys):
    other = save_image(Image.new("RGB", (16, 16)), tmp_path / "in" / "small.png")
    line = _refused(capsys, tmp_path, str(other), str(picture), "--upscaler", "lanczos", "--scale", "200")
    assert "pic.png" in line and "12800x9600" in line and "8192" in line


def test_an_unreadable_picture_and_an_unknown_architecture_are_one_line(tmp_path, picture, capsys):
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not a png")
    assert "broken.png" in _refused(capsys, tmp_path, str(broken), "--upscaler", "nearest")
    unknown = tmp_path / "lib" / "upscalers" / "swin.safetensors"
    unknown.parent.mkdir(parents=True)
    save_file({"layers.0.residual_group.blocks.0.norm1.weight": np.zeros(4, np.float32)}, str(unknown))
    line = _refused(capsys, tmp_path, str(picture), "--upscaler", "swin")
    assert "swin.safetensors is not an upscaler architecture mlx-sd knows" in line


def test_postprocess_fields_without_parameters():
    assert add_postprocess(None, "Lanczos", 2.0) == "Postprocess upscaler: Lanczos, Postprocess upscale by: 2"
    assert add_postprocess("just a prompt", "4x, sharp", 4.0) == (
        'just a prompt\nPostprocess upscaler: "4x, sharp", Postprocess upscale by: 4'
    )


@pytest.mark.parametrize("scale", ["0", "-2", "inf", "nan"])
def test_a_scale_that_is_not_a_positive_number_is_one_line(tmp_path, picture, capsys, scale):
    assert "upscale factor must be a finite number above 0" in _refused(
        capsys, tmp_path, str(picture), "--upscaler", "lanczos", "--scale", scale
    )


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path, picture, capsys):
    (tmp_path / "out").write_text("")
    code, paths, err = _run(capsys, str(picture), "--upscaler", "nearest", "--output", str(tmp_path / "out"))
    assert code == 1 and paths == [] and "is a file" in err and len(err.strip().splitlines()) == 1
