"""The one reader of safetensors headers, for the converter and the model loader alike.

A safetensors file is an 8-byte little-endian header length, a JSON object
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`, then the
data section. Every rule the safetensors library itself enforces is checked here before a byte of
tensor data is touched, so a damaged or hostile file is one HeaderError naming what is wrong:
the header length fits the file, the JSON is an object (deep nesting refused, not a RecursionError),
each dtype is known, each shape is a list of non-negative ints, each byte range is exactly
dtype x shape, and the ranges tile the data section from its first byte to the file's end with no
gap or overlap.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .dtypes import SAFETENSORS_DTYPES

HEADER_LIMIT = 100 << 20  # the safetensors library's own limit; real headers are well under 10 MB
MAX_EXTENT = 2**31 - 1  # mlx shapes are 32-bit: no weight has a longer axis


class HeaderError(ValueError):
    """A file is not a whole, valid safetensors file; the message names the file and the fault."""


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # safetensors spelling: F16, BF16, F32, ...
    begin: int = 0  # byte range inside the data section (a pickle's tensors have none)
    end: int = 0


@dataclass(frozen=True)
class SafetensorsHeader:
    prefix: bytes  # the length field and the JSON exactly as in the file (a file hash starts with them)
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    @property
    def data_start(self) -> int:
        return len(self.prefix)


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """The validated header of the safetensors file at `path`; HeaderError says what is wrong,
    OSError comes from the file system."""
    path = Path(path)
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        length_field = handle.read(8)
        if len(length_field) < 8:
            raise HeaderError(
                f"{path.name} is not a safetensors file: it has {size} bytes, fewer than the 8-byte header length"
            )
        length = int.from_bytes(length_field, "little")
        if length > min(size - 8, HEADER_LIMIT):
            raise HeaderError(
                f"{path.name} is not a valid safetensors file: its header claims {length} bytes but the file has "
                f"{size - 8} after the length field (a truncated download or not a safetensors file)"
            )
        text = handle.read(length)
    try:
        tensors, metadata = parse_header(text, size - 8 - length)
    except HeaderError as exc:
        raise HeaderError(f"{path.name} {exc}") from None
    return SafetensorsHeader(length_field + text, tensors, metadata)


def parse_header(text: bytes, data_size: int) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensors, metadata) of a header's JSON, for a data section of `data_size` bytes.

    HeaderError's message reads after the file's name ("is not a valid safetensors file: ...")."""
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeaderError(f"is not a valid safetensors file: its header is not JSON ({exc.__class__.__name__})") from None
    except RecursionError:  # the C decoder counts its depth: nesting is refused in time linear in the text
        raise HeaderError("is not a valid safetensors file: its header nests too deeply to be a tensor list") from None
    if not isinstance(header, dict):
        raise HeaderError("is not a valid safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise HeaderError("is not a valid safetensors file: its __metadata__ is not a map of strings")
    tensors = {name: _entry(name, value) for name, value in header.items()}
    _check_tiling(tensors, data_size)
    return tensors, metadata


def _entry(name: str, entry: object) -> TensorInfo:
    bad = f"is not a valid safetensors file: the header entry for {name!r:.200}"
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) or entry["dtype"] not in SAFETENSORS_DTYPES:
        raise HeaderError(f"{bad} has no known dtype (found {entry!r:.80})")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(_is_int(d) and 0 <= d <= MAX_EXTENT for d in shape)):
        raise HeaderError(f"{bad} has an invalid shape {shape!r:.80}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise HeaderError(f"{bad} has invalid data_offsets {offsets!r:.80}")
    begin, end = offsets
    expected = math.prod(shape) * SAFETENSORS_DTYPES[entry["dtype"]][1]
    if not 0 <= begin <= end or end - begin != expected:
        raise HeaderError(f"{bad} spans bytes {begin}..{end}, but shape {shape} of {entry['dtype']} needs {expected}")
    return TensorInfo(tuple(shape), entry["dtype"], begin, end)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tiling(tensors: dict[str, TensorInfo], data_size: int) -> None:
    """The tensors' byte ranges follow one another from 0 to the end of the file, as safetensors requires."""
    position, previous = 0, None
    for entry, name in sorted(((entry.begin, entry.end), name) for name, entry in tensors.items()):
        begin, end = entry
        if end > data_size:
            raise HeaderError(
                f"is truncated: tensor {name!r:.200} needs bytes up to {end} of the data section but the file "
                f"holds only {data_size}; download or copy it again"
            )
        if begin < position:
            raise HeaderError(f"is not a valid safetensors file: tensors {previous!r:.200} and {name!r:.200} overlap")
        if begin > position:
            raise HeaderError(
                f"is not a valid safetensors file: bytes {position}..{begin} of the data section belong to no tensor"
            )
        position, previous = end, name
    if position != data_size:
        raise HeaderError(
            f"is not a valid safetensors file: its data section has {data_size} bytes but its tensors end at {position}"
        )
