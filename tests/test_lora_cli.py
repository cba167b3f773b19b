"""`mlx-sd generate --library / --lora-dir / --embeddings-dir / --allow-pickle` on a tiny random model:
LoRA tags and embedding names in the prompts, their hashes in the saved infotext, one-line errors (exit 2)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from model_folders import CONFIGS, write_random_model
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import save_file

from cli.main import main
from mlx_sd.image_metadata import read_infotext
from mlx_sd.infotext import parse_infotext, resource_hashes
from mlx_sd.model_format import weights_file

CONFIG = dataclasses.replace(CONFIGS["sd1"], dtype="float32")
WIDTH = CONFIG.text_encoders["text_encoder"].hidden_size
BASE = ["--width", "64", "--height", "64", "--steps", "2", "--seed", "7", "--sampler", "Euler"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lora-cli") / "tiny-sd1"
    write_random_model(folder, CONFIG, seed=3)
    return folder


def peft_lora(model: Path, path: Path) -> Path:
    """A random PEFT LoRA on every attention projection of the model's UNet."""
    rng = np.random.default_rng(1)
    state = {}
    with safe_open(str(weights_file(model, "unet")), framework="numpy") as file:
        for key in file.keys():
            if key.endswith(("to_q.weight", "to_k.weight", "to_v.weight")):
                out_features, in_features = file.get_slice(key).get_shape()
                name = f"unet.{key.removesuffix('.weight')}"
                state[f"{name}.lora_A.weight"] = rng.standard_normal((4, in_features)).astype(np.float32)
                state[f"{name}.lora_B.weight"] = rng.standard_normal((out_features, 4)).astype(np.float32)
    save_file(state, str(path))
    return path


def generate(capsys, model: Path, out: Path, *args: str) -> tuple[int, list[Path], str]:
    code = main(["generate", "--model", str(model), "--output", str(out), *BASE, *args])
    captured = capsys.readouterr()
    return code, [Path(line) for line in captured.out.splitlines()], captured.err


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def test_lora_tags_and_embeddings_from_extra_folders(capsys, model, tmp_path):
    loras, embeddings = tmp_path / "loras", tmp_path / "embeddings"
    loras.mkdir(), embeddings.mkdir()
    peft_lora(model, loras / "detail.safetensors")
    save_file({"emb_params": np.ones((2, WIDTH), np.float32)}, str(embeddings / "badhands.safetensors"))
    empty = tmp_path / "library"
    folders = ["--library", str(empty), "--lora-dir", str(loras), "--embeddings-dir", str(embeddings)]
    code, [plain], _ = generate(capsys, model, tmp_path / "out", "a cat", *folders)
    assert code == 0
    code, [styled], err = generate(
        capsys, model, tmp_path / "out", "a cat <lora:detail:0.7>", "--negative", "badhands", *folders
    )
    assert code == 0, err
    info = parse_infotext(read_infotext(styled))
    assert info.prompt == "a cat <lora:detail:0.7>"
    assert list(resource_hashes(info.params, "Lora hashes")) == ["detail"]
    assert list(resource_hashes(info.params, "TI hashes")) == ["badhands"]
    assert np.abs(pixels(styled) - pixels(plain)).max() > 8


def test_library_folder_and_bad_resources_are_one_line_with_exit_2(capsys, model, tmp_path):
    library = tmp_path / "library"
    (library / "loras").mkdir(parents=True)
    (library / "embeddings").mkdir()
    peft_lora(model, library / "loras" / "style.safetensors")
    torch.save({"unet.x.lora_A.weight": torch.zeros(2, 2)}, library / "loras" / "pickled.pt")
    save_file({"emb_params": np.ones((1, WIDTH + 8), np.float32)}, str(library / "embeddings" / "wide.safetensors"))
    out = tmp_path / "out"
    code, [_], err = generate(capsys, model, out, "<lora:style:1> a cat", "--library", str(library))
    assert code == 0, err
    cases = {
        ("<lora:styel:1>",): "no LoRA named 'styel' in .*loras \\(closest: style\\)",
        ("<lora:pickled:1>",): "pickled.pt is a pickle checkpoint .*--allow-pickle",
        ("a wide cat",): f"wide is an embedding of width {WIDTH + 8}; the loaded model's text encoder has width {WIDTH}",
    }
    for args, message in cases.items():
        code, paths, err = generate(capsys, model, out, *args, "--library", str(library))
        assert (code, paths) == (2, []), err
        assert "Traceback" not in err and err.splitlines()[-1].startswith("mlx-sd generate: error: ")
        assert re.search(message, err.splitlines()[-1]), err
