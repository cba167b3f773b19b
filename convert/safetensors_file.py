"""Reading `.safetensors` files ourselves, so that damaged files fail with a clear message.

The header is validated (length, JSON, dtypes, shapes, and every tensor's byte range inside the
file) before any tensor is read. Tensors are then read in file order in one streaming pass that can
also feed every byte of the file to a hash, so the model hash costs no second read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import mlx.core as mx

from .errors import ConversionError

# safetensors dtype -> (numpy dtype used to read the bytes, bytes per element)
_NUMPY = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_FLOATS = ("F64", "F32", "F16", "BF16")
_MAX_HEADER = 100 * 2**20  # real headers are well under 10 MB
_CHUNK = 16 * 2**20


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # safetensors spelling: F16, BF16, F32, ...
    begin: int = 0  # byte range inside the data section (safetensors only)
    end: int = 0


def hash_file(path: Path, hasher: "hashlib._Hash") -> None:
    """Feed a whole file to `hasher` in chunks (for sources not read through SafetensorsFile)."""
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)


def to_mx(buffer: bytes | np.ndarray, dtype: str, shape: tuple[int, ...], name: str) -> mx.array:
    """Raw little-endian bytes of one tensor -> an mx.array with the same values."""
    if dtype not in _FLOATS:
        raise ConversionError(f"tensor {name!r} has dtype {dtype}; a weight must be F16, BF16, F32 or F64")
    values = np.frombuffer(buffer, dtype=_NUMPY[dtype]).reshape(shape)
    if dtype == "BF16":  # numpy has no bfloat16: carry the bits and reinterpret them in mlx
        return mx.array(values).view(mx.bfloat16)
    if dtype == "F64":
        values = values.astype(np.float32)
    return mx.array(values)


class SafetensorsFile:
    """A validated `.safetensors` file: `tensors` maps every name to its TensorInfo."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ConversionError(
                    f"{self.path.name} is not a safetensors file: it has {size} bytes, "
                    "fewer than the 8-byte header length"
                )
            length = int.from_bytes(prefix, "little")
            if length > min(size - 8, _MAX_HEADER):
                raise ConversionError(
                    f"{self.path.name} is not a valid safetensors file: its header claims {length} bytes but the file "
                    f"has {size - 8} after the length field (a truncated download or not a safetensors file)"
                )
            self.header_bytes = prefix + handle.read(length)
        try:
            header = json.loads(self.header_bytes[8:].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConversionError(
                f"{self.path.name} is not a valid safetensors file: its header is not JSON ({exc.__class__.__name__})"
            ) from None
        if not isinstance(header, dict):
            raise ConversionError(f"{self.path.name} is not a valid safetensors file: its header is not a JSON object")
        self.data_start = 8 + length
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.tensors = {name: self._check_entry(name, entry, size - self.data_start) for name, entry in header.items()}
        ranges = sorted((info.begin, info.end, name) for name, info in self.tensors.items() if info.end > info.begin)
        for (_, end, first), (begin, _, second) in zip(ranges, ranges[1:]):
            if begin < end:
                raise ConversionError(
                    f"{self.path.name} is not a valid safetensors file: tensors {first!r} and {second!r} overlap"
                )

    def _check_entry(self, name: str, entry: object, data_size: int) -> TensorInfo:
        bad = f"{self.path.name} is not a valid safetensors file: the header entry for {name!r}"
        if not isinstance(entry, dict) or entry.get("dtype") not in _NUMPY:
            raise ConversionError(f"{bad} has no known dtype (found {entry!r:.80})")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ConversionError(f"{bad} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ConversionError(f"{bad} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        expected = math.prod(shape) * np.dtype(_NUMPY[entry["dtype"]]).itemsize
        if not 0 <= begin <= end or end - begin != expected:
            raise ConversionError(
                f"{bad} spans bytes {begin}..{end}, but shape {shape} of {entry['dtype']} needs {expected}"
            )
        if end > data_size:
            raise ConversionError(
                f"{self.path.name} is truncated: tensor {name!r} needs bytes up to {end} of the data section but the "
                f"file holds only {data_size}; download or copy it again"
            )
        return TensorInfo(tuple(shape), entry["dtype"], begin, end)

    def arrays(self, wanted: Collection[str], hasher: "hashlib._Hash | None" = None) -> Iterator[tuple[str, mx.array]]:
        """Yield (name, array) for the `wanted` tensors in file order.

        With `hasher`, every byte of the file (header, gaps, unwanted tensors, trailing bytes) is fed to it,
        so after the loop it holds the hash of the whole file.
        """
        order = sorted(self.tensors.items(), key=lambda item: item[1].begin)
        with open(self.path, "rb") as handle:
            if hasher:
                hasher.update(self.header_bytes)
            position = 0  # inside the data section
            handle.seek(self.data_start)
            for name, info in order:
                if name not in wanted and not hasher:
                    continue
                if hasher:
                    _copy_to_hash(handle, info.begin - position, hasher)
                else:
                    handle.seek(self.data_start + info.begin)
                if name in wanted:
                    buffer = handle.read(info.end - info.begin)
                    if hasher:
                        hasher.update(buffer)
                    yield name, to_mx(buffer, info.dtype, info.shape, name)
                else:
                    _copy_to_hash(handle, info.end - info.begin, hasher)
                position = info.end
            if hasher:
                while chunk := handle.read(_CHUNK):
                    hasher.update(chunk)


def _copy_to_hash(handle, count: int, hasher: "hashlib._Hash") -> None:
    while count > 0:
        chunk = handle.read(min(count, _CHUNK))
        if not chunk:
            return
        hasher.update(chunk)
        count -= len(chunk)


class ShardedSafetensors:
    """Several safetensors files read as one (diffusers' sharded weights); hashes their concatenation."""

    def __init__(self, paths: list[Path]):
        self.files = [SafetensorsFile(path) for path in paths]
        self.path = self.files[0].path
        self.metadata: dict[str, str] = {}
        self.tensors = {name: info for file in self.files for name, info in file.tensors.items()}

    def arrays(self, wanted: Collection[str], hasher: "hashlib._Hash | None" = None) -> Iterator[tuple[str, mx.array]]:
        for file in self.files:
            yield from file.arrays(wanted, hasher)
