"""A weight file mapped into memory instead of read: its arrays are the page cache's own pages.

mx.load reads every tensor into fresh memory, and on the CPU each fresh page costs a fault and the
kernel's zeroing before the copy: most of a load's time (issue 6: SD1.5 1-6 s, SDXL 8-17 s on the
test VM, whose host takes freed memory back and faults it in again). Mapped, SD1.5's UNet file
(1.6 GB) is ready in 0.65 s and SDXL's (4.9 GB) in 1.6 s, and its pages are shared with the page
cache rather than copied. The mapping is private and copy-on-write: no array can write to the file.

Only with mlx's CPU-only build (a GPU backend's allocator owns every array) and the compiled CPU kernels, which
make these arrays (csrc/mapped_weights.cpp); it checks, once, that the arrays it makes read back
what mlx itself saved. Elsewhere `load` returns None and the caller reads the file with mx.load.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np

from .cpu import kernels as cpu_kernels
from .device import current_device, gpu_available

# safetensors dtype codes -> (mlx dtype name, bytes per element)
DTYPES = {
    "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "U32": ("uint32", 4), "I32": ("int32", 4), "U8": ("uint8", 1),
}  # fmt: skip
HEADER_LIMIT = 100 << 20  # safetensors' own limit on the JSON header


def read_header(path: Path) -> tuple[int, dict[str, dict]]:
    """(where the tensor data starts, {name: {"dtype", "shape", "data_offsets"}}) of a safetensors
    file, every tensor checked to lie inside the file; ValueError names what is wrong."""
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise ValueError("the file is shorter than a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(HEADER_LIMIT, size - 8):
            raise ValueError(f"its header claims {length} bytes, more than the file holds")
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    start = 8 + length
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    for name, entry in tensors.items():
        try:
            _, itemsize = DTYPES[entry["dtype"]]
            first, last = entry["data_offsets"]
            shape = [int(extent) for extent in entry["shape"]]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r}: an unreadable or unsupported entry {entry!r}") from None
        if last - first != math.prod(shape) * itemsize or first < 0 or start + last > size:
            raise ValueError(f"tensor {name!r} does not fit in the file (truncated or damaged)")
    return start, tensors


@functools.cache
def _supported() -> bool:
    """Whether mapped arrays work with this mlx: a small file saved by mlx reads back equal."""
    if gpu_available() or current_device() != "cpu" or not cpu_kernels.available():
        return False  # a GPU backend's allocator owns CPU arrays too, with buffers of its own kind
    expected = {"a": mx.arange(7, dtype=mx.float16), "b": mx.array([[1.5, -2.0], [3.25, 4.0]])}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "check.safetensors"
        mx.save_safetensors(str(path), expected)
        try:
            got = _map(path)
        except (RuntimeError, ValueError, OSError):
            return False
        return all(np.array_equal(np.array(got[k]), np.array(v)) and got[k].dtype == v.dtype for k, v in expected.items())


def _map(path: Path) -> dict[str, mx.array]:
    start, tensors = read_header(path)
    module = cpu_kernels.status().module
    mapping = module.map_file(str(path))
    return {
        name: module.mapped_array(mapping, start + entry["data_offsets"][0], entry["shape"], DTYPES[entry["dtype"]][0])
        for name, entry in tensors.items()
    }


def load(path: Path) -> dict[str, mx.array] | None:
    """The file's tensors as arrays on its mapped pages, or None where mapping is not available
    (then read it with mx.load). Raises ValueError or OSError for a file that is not a whole
    safetensors file."""
    if not _supported():
        return None
    return _map(path)
