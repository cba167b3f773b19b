"""Weights mapped from their files (mlx_sd.mapped_weights): equal to mx.load's, never written back to
the file, unmapped with their last array, and damaged files refused as mx.load's path refuses them."""

from __future__ import annotations

import gc
import os
import hashlib
import struct
from pathlib import Path


import mlx.core as mx
from mlx_sd.cpu import kernels as cpu_kernels
import numpy as np
import pytest
from model_folders import CONFIGS, write_random_model

from mlx_sd import mapped_weights
from mlx_sd.model_format import ModelFolderError
from mlx_sd.pipeline import Pipeline
from mlx_sd.safetensors_header import HeaderError, read_header

needs_mapping = pytest.mark.skipif(not mapped_weights._supported(), reason="mapped weights: mlx's CPU-only build")


def save(path: Path, arrays: dict[str, mx.array]) -> Path:
    """A read-only file, as the library keeps its models (only such files are mapped)."""
    mx.save_safetensors(str(path), arrays)
    path.chmod(0o444)
    return path


def load(path: Path) -> dict[str, mx.array] | None:
    return mapped_weights.load(path, read_header(path))


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
    mapped, read = load(path), mx.load(str(path))
    assert sorted(mapped) == sorted(read)
    for name, value in read.items():
        assert mapped[name].dtype == value.dtype and mapped[name].shape == value.shape
        assert np.array_equal(np.array(mapped[name].astype(mx.float32)), np.array(value.astype(mx.float32))), name
    assert mx.allclose(mapped["f32"] @ mapped["f32"].T, read["f32"] @ read["f32"].T).item()  # usable in ops


@needs_mapping
def test_results_never_reach_the_file_and_the_mapping_ends_with_its_arrays(tmp_path):
    path = save(tmp_path / "w.safetensors", {"a": mx.arange(4096, dtype=mx.float32) - 100})
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    weights = load(path)
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
        patch.setattr(mapped_weights, "load", lambda path, header: None)  # mx.load's path, for comparison
        read = Pipeline.load(folder)
    sample, context = mx.ones((1, 8, 8, 4)), mx.ones((1, 77, CONFIGS["sd1"].unet.context_dim))
    same = pipe.unet(sample, mx.array([10.0]), context), read.unet(sample, mx.array([10.0]), context)
    assert np.array_equal(np.array(same[0]), np.array(same[1]))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[:5], "fewer than the 8-byte header length"),
        (lambda data: struct.pack("<Q", 1 << 40) + data[8:], "header claims 1099511627776 bytes"),
        (lambda data: data[:8] + b"{" * (len(data) - 8), "not JSON"),
        (lambda data: data[: len(data) - 7], "is truncated: tensor 'a' needs bytes up to 256"),
        (lambda data: data + b"\0", "data section has 257 bytes but its tensors end at 256"),
    ],
)
def test_damaged_files_are_refused_with_the_reason(tmp_path, damage, message):
    path = save(tmp_path / "w.safetensors", {"a": mx.arange(64, dtype=mx.float32)})
    path.chmod(0o644)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(HeaderError, match=message):
        read_header(path)


@needs_mapping
def test_a_damaged_weight_file_is_a_model_folder_error(tmp_path):
    folder = tmp_path / "model"
    write_random_model(folder, CONFIGS["sd1"])
    vae = folder / "vae.safetensors"
    vae.chmod(0o644)
    vae.write_bytes(vae.read_bytes()[: vae.stat().st_size - 100])
    with pytest.raises(ModelFolderError, match=r"vae: cannot read .*vae.safetensors is truncated: tensor '.*' needs bytes up to"):
        Pipeline.load(folder)


def test_only_read_only_files_on_local_disks_are_mapped(tmp_path, monkeypatch):
    path = save(tmp_path / "w.safetensors", {"a": mx.arange(8, dtype=mx.float32)})
    assert mapped_weights.mapping_is_safe(path) == (mapped_weights.filesystem_type(path) not in (None, "nfs4"))
    monkeypatch.setattr(mapped_weights, "filesystem_type", lambda path: "nfs4")
    assert not mapped_weights.mapping_is_safe(path)  # a share can change the file behind the mapping
    monkeypatch.setattr(mapped_weights, "filesystem_type", lambda path: "fuse.sshfs")
    assert not mapped_weights.mapping_is_safe(path)
    monkeypatch.setattr(mapped_weights, "filesystem_type", lambda path: "ext4")
    assert mapped_weights.mapping_is_safe(path)
    path.chmod(0o644)  # the user's own file, which they may edit: read, not mapped
    assert not mapped_weights.mapping_is_safe(path)
    assert load(path) is None


_GENERATE_AFTER_CHANGE = """
import os, sys
from pathlib import Path
import mlx_sd
from mlx_sd.model_format import ModelChangedError
from mlx_sd.pipeline import Pipeline
from mlx_sd.request import GenerationRequest

folder, change = Path(sys.argv[1]), sys.argv[2]
pipe = Pipeline.load(folder)
request = GenerationRequest(prompt="a", width=64, height=64, steps=1, seed=1)
pipe.generate(request)
path = folder / "unet.safetensors"  # mapped, and kept mapped: the UNet computes on its float16 pages
if change == "rewrite":  # the same bytes written again in place: a new modification time
    path.write_bytes(path.read_bytes())
else:
    os.truncate(path, path.stat().st_size // 2)
if change == "truncate, unchecked":
    pipe.files = None  # what the check prevents: the next read of a page past the new end is a SIGBUS
try:
    pipe.generate(request)
except ModelChangedError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("change", ["truncate", "rewrite", "truncate, unchecked"])
def test_a_weight_file_changed_after_loading_is_refused_not_a_crash(tmp_path, change):
    import signal
    import subprocess
    import sys

    folder = tmp_path / "model"
    write_random_model(folder, CONFIGS["sd1"])
    assert (folder / "unet.safetensors").stat().st_mode & 0o777 == 0o444 & ~_umask()
    run = subprocess.run(
        [sys.executable, "-c", _GENERATE_AFTER_CHANGE, str(folder), change],
        capture_output=True, text=True, timeout=300,
    )
    if change == "truncate, unchecked":
        if not mapped_weights._supported() or not cpu_kernels.available():  # the UNet keeps its mapped float16
            pytest.skip("the UNet is not computed on mapped pages here")
        assert run.returncode == -signal.SIGBUS  # the crash the check exists for
        return
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])  # -7 would be SIGBUS
    assert f"refused: {folder / 'unet.safetensors'} was replaced or rewritten after the model was loaded" in run.stdout


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
