"""Our safetensors reader: values and dtypes as written, the whole-file hash computed while reading,
and damaged files refused before any tensor is read."""

import hashlib
import json
import os

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from convert.errors import ConversionError
from convert.safetensors_file import SafetensorsFile


@pytest.fixture()
def sample(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a.weight": rng.standard_normal((3, 4, 2, 2)).astype(np.float32),
        "b.bias": rng.standard_normal((5,)).astype(np.float16),
        "c.ids": np.arange(7, dtype=np.int64),
        "empty": np.zeros((0,), dtype=np.float32),
    }
    path = tmp_path / "sample.safetensors"
    save_file(tensors, str(path), metadata={"note": "x"})
    return path, tensors


def test_reads_values_and_hashes_the_whole_file(sample):
    path, tensors = sample
    file = SafetensorsFile(path)
    assert file.metadata == {"note": "x"}
    assert file.tensors["a.weight"].shape == (3, 4, 2, 2) and file.tensors["b.bias"].dtype == "F16"
    hasher = hashlib.sha256()
    got = dict(file.arrays({"a.weight", "b.bias"}, hasher))
    assert set(got) == {"a.weight", "b.bias"}
    np.testing.assert_array_equal(np.array(got["a.weight"]), tensors["a.weight"])
    assert got["b.bias"].dtype == mx.float16
    np.testing.assert_array_equal(np.array(got["b.bias"]), tensors["b.bias"])
    assert hasher.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_reads_without_hashing_by_seeking(sample):
    path, tensors = sample
    got = dict(SafetensorsFile(path).arrays({"b.bias"}))
    np.testing.assert_array_equal(np.array(got["b.bias"]), tensors["b.bias"])


def test_bfloat16_keeps_its_values(tmp_path):
    import torch
    from safetensors.torch import save_file as save_torch

    values = torch.tensor([[1.0, -2.5], [0.15625, 3e38]], dtype=torch.bfloat16)
    path = tmp_path / "bf16.safetensors"
    save_torch({"w": values}, str(path))
    (name, array), = SafetensorsFile(path).arrays({"w"})
    assert array.dtype == mx.bfloat16
    np.testing.assert_array_equal(np.array(array.astype(mx.float32)), values.float().numpy())


def test_truncated_file_is_refused_before_reading(sample):
    path, _ = sample
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ConversionError, match=r"sample.safetensors is truncated: tensor .* download or copy it again"):
        SafetensorsFile(path)


def test_header_longer_than_the_file(sample):
    path, _ = sample
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    path.write_bytes(path.read_bytes()[: 8 + header_length // 2])
    with pytest.raises(ConversionError, match="header claims .* truncated download or not a safetensors file"):
        SafetensorsFile(path)


def test_random_bytes_are_not_a_safetensors_file(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ConversionError, match="noise.safetensors is not a valid safetensors file"):
        SafetensorsFile(path)


def test_tiny_file(tmp_path):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"abc")
    with pytest.raises(ConversionError, match="fewer than the 8-byte header length"):
        SafetensorsFile(path)


def _raw_file(path, header: dict, data: bytes) -> None:
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data)


def test_header_that_is_not_json(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes((10).to_bytes(8, "little") + b"{not json}" + b"\0" * 8)
    with pytest.raises(ConversionError, match="header is not JSON"):
        SafetensorsFile(path)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}, "no known dtype"),
        ({"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}, "invalid shape"),
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "needs 12"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8]}, "invalid data_offsets"),
    ],
)
def test_inconsistent_header_entries(tmp_path, entry, message):
    path = tmp_path / "bad.safetensors"
    _raw_file(path, {"w": entry}, b"\0" * 16)
    with pytest.raises(ConversionError, match=message):
        SafetensorsFile(path)


def test_overlapping_tensors(tmp_path):
    path = tmp_path / "overlap.safetensors"
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    _raw_file(path, header, b"\0" * 12)
    with pytest.raises(ConversionError, match="overlap"):
        SafetensorsFile(path)
