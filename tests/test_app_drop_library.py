"""Dropping a LoRA, embedding, VAE or upscaler model on the window copies it into the library folder its
keys say it belongs in (never its name); checkpoints still go to the model import."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from safetensors.numpy import save_file

from app.drop_handler import DropKind, classify_file
from app.library_import import LibraryImportError, PicklesNotAllowed, classify_weights, copy_into_library
from app.main_window import MainWindow
from app.settings import AppSettings
from app_support import QT_MARKS, open_window
from test_app_drop import drop, file_mime
from mlx_sd.upscalers import CompactConfig, build_upscaler

pytestmark = QT_MARKS

LORA_KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def write_lora(path: Path, context: int = 768) -> Path:
    """A tiny kohya LoRA on one cross-attention key projection (its input width tells the family)."""
    rng = np.random.default_rng(0)
    save_file({
        f"{LORA_KEY}.lora_down.weight": rng.standard_normal((4, context), np.float32),
        f"{LORA_KEY}.lora_up.weight": rng.standard_normal((320, 4), np.float32),
        f"{LORA_KEY}.alpha": np.array(4.0, np.float32),
    }, str(path), metadata={"ss_tag_frequency": '{"10_style": {"watercolor": 12, "ink sketch": 30, "paper": 2}}'})
    return path


def write_embedding(path: Path, width: int = 768) -> Path:
    save_file({"emb_params": np.zeros((2, width), np.float32)}, str(path))
    return path


def write_vae(path: Path) -> Path:
    save_file({"encoder.conv_in.weight": np.zeros((8, 3, 3, 3), np.float32),
               "decoder.conv_out.weight": np.zeros((3, 8, 3, 3), np.float32)}, str(path))
    return path


def write_upscaler(path: Path) -> Path:
    """A tiny 2x compact model in torch's layout, as in tests/test_upscale_cli.py."""
    mx.random.seed(0)
    model = build_upscaler(CompactConfig(features=4, convs=1, scale=2))
    weights = {k: np.array(v.transpose(0, 3, 1, 2) if v.ndim == 4 else v) for k, v in tree_flatten(model.parameters())}
    save_file(weights, str(path))
    return path


@pytest.fixture
def resources(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "downloads"
    folder.mkdir()
    pt_embedding = folder / "EasyNegative.pt"  # A1111's .pt: nested string_to_param, strings beside
    torch.save({"string_to_param": {"*": torch.zeros(3, 768)}, "name": "EasyNegative", "step": 100}, pt_embedding)
    pth_upscaler = folder / "tiny-x2.pth"  # as Real-ESRGAN publishes them: under params_ema
    mx.random.seed(0)
    model = build_upscaler(CompactConfig(features=4, convs=1, scale=2))
    torch.save({"params_ema": {k: torch.from_numpy(np.array(v.transpose(0, 3, 1, 2) if v.ndim == 4 else v))
                               for k, v in tree_flatten(model.parameters())}}, pth_upscaler)
    return {
        # names that say nothing (or lie): only the keys count
        "loras": write_lora(folder / "model.safetensors"),
        "embeddings": write_embedding(folder / "lora-style.safetensors"),
        "vae": write_vae(folder / "vae-ft-mse-840000-ema-pruned.safetensors"),
        "upscalers": write_upscaler(folder / "4x-thing.safetensors"),
        "pt_embedding": pt_embedding,
        "pth_upscaler": pth_upscaler,
    }


def test_files_are_classified_by_their_keys(resources: dict[str, Path], tmp_path: Path) -> None:
    for kind in ("loras", "embeddings", "vae", "upscalers"):
        assert classify_weights(resources[kind]) == kind
        item = classify_file(resources[kind])
        assert item.kind is DropKind.RESOURCE and item.resource == kind
    assert classify_weights(resources["pt_embedding"], allow_pickle=True) == "embeddings"
    assert classify_weights(resources["pth_upscaler"], allow_pickle=True) == "upscalers"
    assert classify_file(resources["pt_embedding"], allow_pickle=True).resource == "embeddings"
    checkpoint = tmp_path / "lora-named.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((4, 4, 3, 3), np.float32)}, str(checkpoint))
    assert classify_file(checkpoint).kind is DropKind.CHECKPOINT  # a checkpoint is imported as before


def test_a_damaged_file_is_one_line(tmp_path: Path) -> None:
    damaged = tmp_path / "cut.safetensors"
    damaged.write_bytes(b"\xff\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(LibraryImportError, match="cut.safetensors is not a valid safetensors file"):
        classify_weights(damaged)
    item = classify_file(damaged)
    assert item.kind is DropKind.UNSUPPORTED and "\n" not in item.message and "cut.safetensors" in item.message


def test_copy_is_atomic_and_a_name_clash_gets_a_number(resources: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "library" / "loras"
    first, copied = copy_into_library(resources["loras"], folder)
    assert copied and first == folder / "model.safetensors" and first.read_bytes() == resources["loras"].read_bytes()
    again, copied = copy_into_library(resources["loras"], folder)
    assert (again, copied) == (first, False)  # the same bytes are not copied twice
    other = tmp_path / "other" / "model.safetensors"
    other.parent.mkdir()
    write_lora(other, context=2048)
    second, copied = copy_into_library(other, folder)
    assert copied and second.name == "model (2).safetensors"
    assert sorted(p.name for p in folder.iterdir()) == ["model (2).safetensors", "model.safetensors"]  # no temp left


def test_a_failed_copy_leaves_nothing(resources: dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "library"
    blocker.write_text("a file where the library folder should be")
    with pytest.raises(LibraryImportError, match="could not be copied into"):
        copy_into_library(resources["vae"], blocker / "vae")


def _drop(qtbot, window: MainWindow, path: Path) -> None:
    item = classify_file(path)
    with qtbot.waitSignal(window.resourcesChanged, timeout=10_000):
        window.handle_drop(item)


def test_dropped_resources_land_in_their_library_folders(qtbot, resources: dict[str, Path], tmp_path: Path) -> None:
    library = tmp_path / "library"
    window = open_window(qtbot, library)
    for kind in ("loras", "embeddings", "vae", "upscalers"):
        _drop(qtbot, window, resources[kind])
        assert (library / kind / resources[kind].name).is_file()
        assert "Added the" in window.statusBar().currentMessage()
    _drop(qtbot, window, resources["loras"])
    assert window.statusBar().currentMessage() == "The LoRA model is in the library already"
    assert not (library / "models").exists()  # nothing was imported as a checkpoint


def test_a_resource_with_a_suffix_the_library_does_not_list_is_explained(tmp_path: Path) -> None:
    torch.save({f"{LORA_KEY}.lora_down.weight": torch.zeros(4, 768)}, tmp_path / "style.bin")  # loras/ lists no .bin
    item = classify_file(tmp_path / "style.bin", allow_pickle=True)
    assert item.kind is DropKind.UNSUPPORTED
    assert item.message.startswith("style.bin is a LoRA, but the library uses LoRA files ending in .safetensors")


def test_pickles_are_not_unpickled_unless_the_setting_allows_them(qtbot, resources: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch) -> None:
    import convert.pickle_file
    import mlx_sd.lora.files

    def unpickled(*args, **kwargs):
        raise AssertionError("a pickle was unpickled with the setting off")

    with monkeypatch.context() as patch:
        patch.setattr(convert.pickle_file.PickleCheckpoint, "__init__", unpickled)
        patch.setattr(mlx_sd.lora.files, "_read_pickle", unpickled)
        for key in ("pt_embedding", "pth_upscaler"):
            with pytest.raises(PicklesNotAllowed):
                classify_weights(resources[key])
            item = classify_file(resources[key])
            assert item.kind is DropKind.UNSUPPORTED and "\n" not in item.message
            assert item.message.startswith(f"{resources[key].name} is a pickle file") and "'Allow pickle files'" in item.message
    library = tmp_path / "library"
    window = open_window(qtbot, library)
    assert drop(window.result_view.canvas, file_mime(resources["pt_embedding"]))  # read by the window's worker
    assert window.message_bar.kind == "error" and "'Allow pickle files'" in window.message_bar.text()
    window.apply_settings(AppSettings(allow_pickle=True))
    with qtbot.waitSignal(window.resourcesChanged, timeout=10_000):
        assert drop(window.result_view.canvas, file_mime(resources["pt_embedding"]))
    assert (library / "embeddings" / "EasyNegative.pt").is_file()
