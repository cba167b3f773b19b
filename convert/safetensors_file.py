"""Reading `.safetensors` files ourselves, so that damaged files fail with a clear message.

The header is validated by the engine's one header reader (mlx_sd.safetensors_header) before any
tensor is read. Tensors are then read in file order in one streaming pass that can also feed every
byte of the file to a hash, so the model hash costs no second read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np

import mlx.core as mx
from mlx_sd.dtypes import SAFETENSORS_DTYPES
from mlx_sd.safetensors_header import HeaderError, TensorInfo, read_header

from .errors import ConversionError

# safetensors dtype -> the numpy dtype its bytes are read as (bfloat16's bits as uint16)
_NUMPY = {
    code: np.dtype(np.uint16 if name == "bfloat16" else name) for code, (name, _) in SAFETENSORS_DTYPES.items()
}
_FLOATS = ("F64", "F32", "F16", "BF16")
_CHUNK = 16 * 2**20


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
        try:
            header = read_header(self.path)
        except HeaderError as exc:
            raise ConversionError(str(exc)) from None
        self.header_bytes = header.prefix
        self.data_start = header.data_start
        self.metadata: dict[str, str] = header.metadata
        self.tensors: dict[str, TensorInfo] = header.tensors

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
