"""The short hashes A1111 writes into the infotext for the resources a generation used, so that sites
such as Civitai recognise them:

- `Lora hashes`: the file's `sshs_model_hash` metadata when it has one, else the SHA-256 of a
  safetensors file's bytes after its header (kohya's "addnet" hash: metadata edits do not change it),
  of a pickle's whole file; the first 12 hex digits.
- `TI hashes`: the first 12 hex digits of the whole file's SHA-256.

Hashes are remembered per file (path, size and modification time), so a LoRA used again costs nothing.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from .safetensors_header import read_header

SHORT_HASH = 12
_CHUNK = 16 * 2**20
_REMEMBERED = 256


def sha256_of_file(path: str | os.PathLike[str], start: int = 0) -> str:
    """The SHA-256 of the file's bytes from `start` on, hex; remembered until the file changes."""
    stat = os.stat(path)
    return _sha256(str(path), start, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=_REMEMBERED)
def _sha256(path: str, start: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(start)
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def lora_hash(path: Path, metadata: dict[str, str] | None = None) -> str:
    """A1111's short LoRA hash (see the module docstring); `metadata` is the file's safetensors metadata."""
    recorded = (metadata or {}).get("sshs_model_hash", "")
    if recorded:
        return recorded[:SHORT_HASH].lower()
    start = read_header(path).data_start if path.suffix.lower() == ".safetensors" else 0
    return sha256_of_file(path, start)[:SHORT_HASH]


def embedding_hash(path: Path) -> str:
    """A1111's short textual-inversion hash."""
    return sha256_of_file(path)[:SHORT_HASH]


def hashes_value(hashes: dict[str, str]) -> str:
    """`name: hash, name2: hash2`, names without the `:` and `,` that would break the list (A1111)."""
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {short}" for name, short in hashes.items())


def parse_hashes_value(value: str) -> dict[str, str]:
    """The names and hashes of a `Lora hashes` / `TI hashes` value (entries without a hash are skipped)."""
    pairs = (entry.rpartition(":") for entry in value.split(","))
    return {name.strip(): short.strip() for name, colon, short in pairs if colon and name.strip() and short.strip()}
