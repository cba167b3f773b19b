"""Pipeline.load on tiny model folders written with model_format.write_model, and its strict errors."""

import errno
import json
import os
import shutil
import time
from pathlib import Path


import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from mlx_sd import model_format
from mlx_sd.clip import CLIPTextModel
from mlx_sd.cpu.accelerate import accelerate
from mlx_sd.cpu.modules import CpuConv2d
from mlx_sd.device import compute_dtype, current_device
from mlx_sd.model_format import ModelFolderError, WeightsError, write_model
from mlx_sd.pipeline import Pipeline
from mlx_sd.tokenizer import BUNDLED_FOLDER
from mlx_sd.unet import UNet2DConditionModel
from model_folders import CONFIGS, random_weights, write_random_model

@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("models")
    return {family: (root / family, write_random_model(root / family, config)) for family, config in CONFIGS.items()}


def assert_same_parameters(pipe: Pipeline, written: dict[str, dict[str, mx.array]], dtype: mx.Dtype) -> None:
    for name, weights in written.items():
        loaded = dict(tree_flatten(getattr(pipe, name).parameters()))
        assert sorted(loaded) == sorted(weights), name
        for key, value in weights.items():
            assert loaded[key].dtype == dtype, (name, key, loaded[key].dtype)
            assert np.array_equal(np.array(loaded[key].astype(mx.float32)), np.array(value.astype(mx.float32))), key


@pytest.mark.parametrize("family", list(CONFIGS))
def test_load_round_trip_on_this_device(folders: dict, family: str) -> None:
    folder, written = folders[family]
    start = time.perf_counter()
    pipe = Pipeline.load(folder)
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6
    print(f"\n{family}: loaded {size:.1f} MB of float16 weights in {seconds:.2f} s")

    on_cpu = current_device() == "cpu"
    expected = compute_dtype(mx.float16)
    assert pipe.dtype == expected
    if on_cpu:
        assert expected == mx.float32  # float16 files compute in float32 on the CPU
        assert pipe.cpu is not None and type(pipe.unet.conv_in) is CpuConv2d  # the CPU's formulations, swapped in
    assert pipe.config == CONFIGS[family]
    assert pipe.folder == folder
    # on the CPU the text encoders (and the UNet with the compiled GEMM) keep their float16 weights
    # and compute in float32
    text_kept, unet_kept = on_cpu, on_cpu and pipe.cpu.kernels
    for name, weights in written.items():
        is_text = name.startswith("text_encoder")
        kept = text_kept if is_text else unet_kept and name == "unet"
        assert_same_parameters(pipe, {name: weights}, mx.float16 if kept else expected)
        if is_text:
            assert getattr(pipe, name).compute_dtype == (expected if kept else None)

    config = CONFIGS[family]
    for encoder, tokenizer in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        text_config = getattr(config, encoder)
        if text_config is None:
            assert getattr(pipe, encoder) is None and getattr(pipe, tokenizer) is None
        else:
            assert getattr(pipe, tokenizer).pad_id == text_config.pad_token_id
            assert getattr(pipe, tokenizer)("a cat")[:1] == [49406]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_text_encoders_in_storage_dtype_compute_as_float32_copies(folders: dict, family: str) -> None:
    pipe = Pipeline.load(folders[family][0])
    ids = mx.array([pipe.tokenizer_2("a cat on a mat") if pipe.tokenizer is None else pipe.tokenizer("a cat on a mat")])
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name)
        if encoder is None:
            continue
        copy = CLIPTextModel(encoder.config)
        copy.update(tree_map(lambda p: p.astype(mx.float32), encoder.parameters()))
        copy = copy if pipe.cpu is None else accelerate(copy, pipe.cpu)  # the same formulations
        for clip_skip in (1, 2):
            kept, cast = encoder.encode(ids, clip_skip), copy.encode(ids, clip_skip)
            assert kept.hidden.dtype == mx.float32
            assert np.abs(np.array(kept.hidden) - np.array(cast.hidden)).max() < 1e-6
            if cast.pooled is not None:
                assert np.abs(np.array(kept.pooled) - np.array(cast.pooled)).max() < 1e-6


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_unet_in_storage_dtype_computes_as_its_float32_copy(folders: dict, family: str) -> None:
    pipe = Pipeline.load(folders[family][0])
    unet = pipe.unet
    config = unet.config
    copy = UNet2DConditionModel(config)
    copy.update(tree_map(lambda p: p.astype(mx.float32), unet.parameters()))
    copy = copy if pipe.cpu is None else accelerate(copy, pipe.cpu)  # the same formulations
    rng = np.random.default_rng(3)
    sample = mx.array(rng.standard_normal((2, 16, 16, config.in_channels), dtype=np.float32))
    context = mx.array(rng.standard_normal((2, 77, config.context_dim), dtype=np.float32))
    extras = {}
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        extras = {"text_embeds": mx.array(rng.standard_normal((2, pooled), dtype=np.float32)),
                  "time_ids": mx.array([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]] * 2)}
    kept, cast = (model(sample, mx.array([10.0, 700.0]), context, **extras) for model in (unet, copy))
    assert kept.dtype == mx.float32
    assert np.abs(np.array(kept) - np.array(cast)).max() < 1e-5 * max(1.0, np.abs(np.array(cast)).max())


def test_dtype_override(folders: dict) -> None:
    folder, written = folders["sd1"]
    pipe = Pipeline.load(folder, dtype=mx.float16)
    assert pipe.dtype == mx.float16
    assert_same_parameters(pipe, written, mx.float16)
    assert Pipeline.load(folder, dtype="bfloat16").dtype == mx.bfloat16
    with pytest.raises(ValueError, match="dtype 'float8'"):
        Pipeline.load(folder, dtype="float8")


# ---------------------------------------------------------------------------------------------
# Strict weights


def edited_copy(folder: Path, tmp_path: Path, component: str, edit) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    path = model_format.weights_file(copy, component)
    weights = mx.load(str(path))
    edit(weights)
    mx.save_safetensors(str(path), weights)
    return copy


def test_missing_key(folders: dict, tmp_path: Path) -> None:
    key = "decoder.conv_out.weight"
    copy = edited_copy(folders["sd1"][0], tmp_path, "vae", lambda w: w.pop(key))
    with pytest.raises(WeightsError, match=rf"vae: missing weight '{key}' \(expected shape \(3, 3, 3, 32\), found none\)"):
        Pipeline.load(copy)


def test_unexpected_key(folders: dict, tmp_path: Path) -> None:
    copy = edited_copy(folders["sd1"][0], tmp_path, "vae", lambda w: w.update(extra=mx.zeros((2, 5))))
    with pytest.raises(WeightsError, match=r"vae: unexpected weight 'extra' \(found shape \(2, 5\)"):
        Pipeline.load(copy)


def test_wrong_shape(folders: dict, tmp_path: Path) -> None:
    key = "encoder.conv_in.weight"
    copy = edited_copy(folders["sd1"][0], tmp_path, "vae", lambda w: w.update({key: mx.zeros((32, 3, 3, 4))}))
    with pytest.raises(
        WeightsError, match=rf"vae: weight '{key}' has shape \(32, 3, 3, 4\), the model expects \(32, 3, 3, 3\)"
    ):
        Pipeline.load(copy)


# ---------------------------------------------------------------------------------------------
# Damaged folders


def test_folder_without_model_json(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="not an mlx-sd model folder"):
        Pipeline.load(tmp_path)


def test_damaged_model_json(folders: dict, tmp_path: Path) -> None:
    copy = shutil.copytree(folders["sd1"][0], tmp_path / "model")
    (copy / "model.json").write_text('{"family": "sd1", "unet": {', encoding="utf-8")
    with pytest.raises(ModelFolderError, match="model.json is damaged"):
        Pipeline.load(copy)


def test_wrong_format_version(folders: dict, tmp_path: Path) -> None:
    copy = shutil.copytree(folders["sd1"][0], tmp_path / "model")
    data = json.loads((copy / "model.json").read_text(encoding="utf-8"))
    data["format_version"] = 99
    (copy / "model.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ModelFolderError, match="format_version 99"):
        Pipeline.load(copy)


def test_truncated_weights(folders: dict, tmp_path: Path) -> None:
    copy = shutil.copytree(folders["sd1"][0], tmp_path / "model")
    path = copy / "unet.safetensors"
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    with pytest.raises(ModelFolderError, match=r"unet: cannot read .*unet.safetensors"):
        Pipeline.load(copy)


def test_missing_weight_file_and_tokenizer(folders: dict, tmp_path: Path) -> None:
    copy = shutil.copytree(folders["sd1"][0], tmp_path / "model")
    shutil.rmtree(copy / "tokenizer")
    with pytest.raises(ModelFolderError, match="tokenizer: cannot read"):
        Pipeline.load(copy)
    (copy / "vae.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="vae: weight file .*vae.safetensors is missing"):
        Pipeline.load(copy)


# ---------------------------------------------------------------------------------------------
# write_model is atomic


def test_write_model_leaves_nothing_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = CONFIGS["sd1"]
    components = random_weights(config)
    real_save = model_format.write_safetensors
    saved = []

    def save_then_interrupt(path, arrays, metadata):
        if saved:  # the second component: the first file is already on disk
            raise KeyboardInterrupt
        real_save(path, arrays, metadata)
        saved.append(path)

    monkeypatch.setattr(model_format, "write_safetensors", save_then_interrupt)
    out = tmp_path / "out" / "model"
    with pytest.raises(KeyboardInterrupt):
        write_model(out, config, components, {"tokenizer": BUNDLED_FOLDER})
    assert saved and not Path(saved[0]).exists()
    assert list(tmp_path.iterdir()) == []  # the parent folder this run created is gone too


def test_write_model_on_a_full_disk_is_one_error_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    config = CONFIGS["sd1"]
    components = random_weights(config)
    real_write = model_format.Path.open

    def full_disk_after_a_while(path, mode="r", *args, **kwargs):
        handle = real_write(path, mode, *args, **kwargs)
        if "x" in mode and path.name == "vae.safetensors":
            handle.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return handle

    monkeypatch.setattr(model_format.Path, "open", full_disk_after_a_while)
    with pytest.raises(OSError, match=r"not enough space to write .*model \(No space left on device\); nothing was kept"):
        write_model(tmp_path / "a" / "b" / "model", config, components, {"tokenizer": BUNDLED_FOLDER})
    assert list(tmp_path.iterdir()) == []


def test_write_model_on_a_real_full_file_system(tmp_path: Path) -> None:
    """A 1 MB tmpfs (needs root, as the CI container runs): the write fails for real, with ENOSPC."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        config = CONFIGS["sd1"]
        with pytest.raises(OSError, match="not enough space to write") as raised:
            write_model(disk / "models" / "model", config, random_weights(config), {"tokenizer": BUNDLED_FOLDER})
        assert raised.value.errno == errno.ENOSPC
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_models_follow_the_umask_and_their_files_are_read_only(tmp_path: Path, umask: int) -> None:
    config = CONFIGS["sd1"]
    components = random_weights(config)
    old = os.umask(umask)
    try:
        folder = write_model(tmp_path / "model", config, components, {"tokenizer": BUNDLED_FOLDER})
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (folder / "tokenizer").stat().st_mode & 0o777 == 0o777 & ~umask
    for path in [p for p in folder.rglob("*") if p.is_file()]:
        assert path.stat().st_mode & 0o777 == 0o444 & ~umask, path
    loaded = mx.load(str(folder / "unet.safetensors"))  # mlx reads what we wrote, values intact
    assert all(mx.array_equal(loaded[k], v).item() for k, v in components["unet"].items())


def test_write_model_failure_in_tokenizer_copy_leaves_nothing(tmp_path: Path) -> None:
    config = CONFIGS["sd1"]
    with pytest.raises(OSError):
        write_model(tmp_path / "model", config, random_weights(config), {"tokenizer": tmp_path / "no-such-folder"})
    assert list(tmp_path.iterdir()) == []


def test_write_model_refuses_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        write_model(tmp_path / "model", CONFIGS["sd1"], {}, {})
