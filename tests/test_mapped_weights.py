"""Weights mapped from their files (mlx_sd.mapped_weights): equal to mx.load's, never written back to
the file, unmapped with their last array, and damaged files refused as mx.load's path refuses them."""

from __future__ import annotations

import gc
import hashlib
import struct
from pathlib import Path


import mlx.core as mx
import numpy as np
import pytest
from model_folders import CONFIGS, write_random_model

from mlx_sd import mapped_weights
from mlx_sd.model_format import ModelFolderError
from mlx_sd.pipeline import Pipeline

needs_mapping = pytest.mark.skipif(not mapped_weights._supported(), reason="mapped weights: mlx's CPU-only build")


def save(path: Path, arrays: dict[str, mx.array]) -> Path:
    mx.save_safetensors(str(path), arrays)
    return path


def mapped_files() -> list[str]:
    return [line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(".safetensors")]


@needs_mapping
def test_mapped_arrays_equal_what_mx_load_reads(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f32": mx.array(rng.standard_normal((3, 5), dtype=np.float32)),
        "f16": mx.array(rng.standard_normal((7,), dtype=np.float32)).astype(mx.float16),  # odd byte counts follow
        "bf16": mx.array(rng.standard_normal((2, 3, 3), dtype=np.float32)).astype(mx.bfloat16),
        "u32": mx.array(rng.integers(0, 2**31, (9,), dtype=np.uint32)),
        "scalar": mx.array(2.5),
    }
    path = save(tmp_path / "w.safetensors", arrays)
    mapped, read = mapped_weights.load(path), mx.load(str(path))
    assert sorted(mapped) == sorted(read)
    for name, value in read.items():
        assert mapped[name].dtype == value.dtype and mapped[name].shape == value.shape
        assert np.array_equal(np.array(mapped[name].astype(mx.float32)), np.array(value.astype(mx.float32))), name
    assert mx.allclose(mapped["f32"] @ mapped["f32"].T, read["f32"] @ read["f32"].T).item()  # usable in ops


@needs_mapping
def test_results_never_reach_the_file_and_the_mapping_ends_with_its_arrays(tmp_path):
    path = save(tmp_path / "w.safetensors", {"a": mx.arange(4096, dtype=mx.float32) - 100})
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    weights = mapped_weights.load(path)
    assert str(path) in mapped_files()
    a = weights.pop("a")
    del weights
    result = mx.abs(a)  # same size and dtype: mlx may reuse a donated input's buffer for it
    del a
    mx.eval(result)
    assert result[:3].tolist() == [100.0, 99.0, 98.0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # copy-on-write: the file is untouched
    del result
    gc.collect()
    assert str(path) not in mapped_files()


@needs_mapping
def test_a_pipeline_computes_on_mapped_weights(tmp_path):
    folder = tmp_path / "model"
    write_random_model(folder, CONFIGS["sd1"])
    pipe = Pipeline.load(folder)
    assert {str(folder / "unet.safetensors"), str(folder / "text_encoder.safetensors")} <= set(mapped_files())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mapped_weights, "load", lambda path: None)  # mx.load's path, for comparison
        read = Pipeline.load(folder)
    sample, context = mx.ones((1, 8, 8, 4)), mx.ones((1, 77, CONFIGS["sd1"].unet.context_dim))
    same = pipe.unet(sample, mx.array([10.0]), context), read.unet(sample, mx.array([10.0]), context)
    assert np.array_equal(np.array(same[0]), np.array(same[1]))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[:5], "shorter than a safetensors header"),
        (lambda data: struct.pack("<Q", 1 << 40) + data[8:], "more than the file holds"),
        (lambda data: data[:8] + b"{" * (len(data) - 8), "not JSON"),
        (lambda data: data[: len(data) - 7], "does not fit in the file"),
    ],
)
def test_damaged_files_are_refused_with_the_reason(tmp_path, damage, message):
    path = save(tmp_path / "w.safetensors", {"a": mx.arange(64, dtype=mx.float32)})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=message):
        mapped_weights.read_header(path)


@needs_mapping
def test_a_damaged_weight_file_is_a_model_folder_error(tmp_path):
    folder = tmp_path / "model"
    write_random_model(folder, CONFIGS["sd1"])
    vae = folder / "vae.safetensors"
    vae.write_bytes(vae.read_bytes()[: vae.stat().st_size - 100])
    with pytest.raises(ModelFolderError, match=r"vae: cannot read .*vae.safetensors: .*does not fit in the file"):
        Pipeline.load(folder)
