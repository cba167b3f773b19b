"""`mlx-sd generate`'s hires fix options: a run on a tiny model, an upscaler model from the library by
name, and bad input in one line before any weights load."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from model_folders import CONFIGS, write_random_model
from PIL import Image

from cli.main import main
from mlx_sd.image_metadata import read_infotext
from mlx_sd.infotext import request_from_infotext
from mlx_sd.upscalers import CompactConfig, SRVGGNetCompact


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hires_cli") / "tiny-sd1"
    write_random_model(folder, CONFIGS["sd1"], seed=3)
    return folder


def generate(capsys, model: Path, out: Path, *args: str) -> tuple[int, list[Path], str]:
    code = main(["generate", "--model", str(model), "--output", str(out), "--width", "64", "--height", "64", *args])
    captured = capsys.readouterr()
    return code, [Path(line) for line in captured.out.splitlines()], captured.err


def test_hires_run_saves_the_larger_image_with_its_parameters(capsys, model: Path, tmp_path: Path) -> None:
    code, paths, err = generate(
        capsys, model, tmp_path, "a cat", "--steps", "3", "--seed", "4", "--hires-scale", "1.5",
        "--hires-upscaler", "latent (bicubic)", "--hires-steps", "4", "--hires-denoise", "0.5",
        "--hires-prompt", "a cat, sharp", "--hires-sampler", "euler",
    )
    assert code == 0, err
    assert Image.open(paths[0]).size == (96, 96) and "step 6/6" in err  # 3 + int(0.5 * 4) + 1 steps
    back = request_from_infotext(read_infotext(paths[0]))
    assert (back.width, back.hires_scale, back.hires_upscaler, back.hires_steps) == (64, 1.5, "Latent (bicubic)", 4)
    assert (back.hires_denoise, back.hires_prompt, back.hires_sampler) == (0.5, "a cat, sharp", "Euler")


def test_an_upscaler_model_is_found_in_the_library(capsys, model: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    folder = tmp_path / "data" / "mlx-sd" / "upscalers"
    folder.mkdir(parents=True)
    network = SRVGGNetCompact(CompactConfig(features=4, convs=1, scale=2))
    mx.eval(network.parameters())
    # saved as Real-ESRGAN's compact files name their layers: body.N.weight in torch's layout
    weights = {k: (v.transpose(0, 3, 1, 2) if v.ndim == 4 else v) for k, v in tree_flatten(network.parameters())}
    mx.save_safetensors(str(folder / "tiny-x2.safetensors"), weights)
    code, paths, err = generate(capsys, model, tmp_path / "out", "a cat", "--steps", "2", "--hires-scale", "2",
                                "--hires-upscaler", "tiny-x2", "--hires-denoise", "0.3")
    assert code == 0, err
    assert Image.open(paths[0]).size == (128, 128) and "Hires upscaler: tiny-x2," in read_infotext(paths[0])


@pytest.mark.parametrize("args, words", [
    (["--hires-scale", "2", "--hires-width", "512"], "--hires-scale and --hires-width/--hires-height are alternatives"),
    (["--hires-scale", "40"], "hires_scale = 40.0 is not allowed: a hires size from 64 to 2048 pixels a side"),
    (["--hires-scale", "2", "--hires-upscaler", "4x-Nope"], "unknown upscaler '4x-Nope'"),
    (["--hires-scale", "2", "--hires-denoise", "2"], "hires_denoise = 2.0 is not allowed"),
])
def test_bad_hires_options_fail_in_one_line_before_loading(capsys, model: Path, tmp_path: Path, monkeypatch, args, words) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    code, paths, err = generate(capsys, model, tmp_path, "a cat", *args)
    assert code != 0 and paths == [] and words in err and "loading" not in err
    assert len(err.strip().splitlines()) == 1


def test_hires_options_without_hires_are_warned_about(capsys, model: Path, tmp_path: Path) -> None:
    code, _, err = generate(capsys, model, tmp_path, "a cat", "--steps", "1", "--hires-denoise", "0.4")
    assert code == 0 and "--hires-denoise has no effect without --hires-scale" in err
