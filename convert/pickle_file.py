"""`.ckpt` / `.pt` / `.bin` checkpoints: torch pickles, read only when the user allows it.

Unpickling can run arbitrary code, so these files are refused unless `allow_pickle` is set; even then
they are read with torch's weights-only unpickler, which builds tensors and plain containers and
refuses everything else. torch is imported only here, only on this path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import mlx.core as mx
from mlx_sd.dtypes import safetensors_code
from mlx_sd.pickle_files import PickleRefused, pickle_refusal

from .errors import ConversionError
from .safetensors_file import TensorInfo, hash_file, to_mx

if TYPE_CHECKING:
    import torch  # for annotations only: torch is imported when a pickle is read


def _safetensors_dtype(dtype: torch.dtype) -> str:
    """A torch dtype in safetensors' spelling ("F16" for torch.float16), its plain name where safetensors has none."""
    name = str(dtype).removeprefix("torch.")
    return safetensors_code(name) or name


class ConversionPickleRefused(PickleRefused, ConversionError):
    """A pickle checkpoint (or VAE) while pickles are not allowed."""


def refuse_pickle(path: Path) -> ConversionError:
    return ConversionPickleRefused(pickle_refusal(path), path)


class PickleCheckpoint:
    """A torch checkpoint loaded with `torch.load(weights_only=True)`; `tensors` as in SafetensorsFile."""

    def __init__(self, path: Path):
        try:
            import torch
        except ImportError:
            raise ConversionError(
                f"reading {path.name} needs PyTorch, which is not installed; install it (pip install torch) "
                "or convert a .safetensors version of this model"
            ) from None
        self.path = Path(path)
        with open(self.path, "rb") as file:
            magic = file.read(4)
        # torch saves a zip archive; checkpoints from before torch 1.6 are a bare pickle (protocol 2+)
        if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
            raise ConversionError(f"{self.path.name} is not a torch checkpoint (neither a zip archive nor a pickle)")
        try:
            loaded = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
            detail = str(exc).splitlines()[0] if str(exc) else "no detail"
            if detail.startswith("Weights only load failed"):
                # torch's own first line is about its defaults, not the file: say what was refused
                detail = "it holds objects other than tensors, which the weights-only reader never builds"
            raise ConversionError(
                f"{self.path.name} cannot be read as a weights-only torch checkpoint ({detail})"
            ) from None
        # the weights may sit one or more levels down: "state_dict" (Lightning), "params_ema" or
        # "params" (Real-ESRGAN's upscalers, the averaged weights preferred)
        while isinstance(loaded, dict) and (wrapper := next(
            (k for k in ("state_dict", "params_ema", "params") if isinstance(loaded.get(k), dict)), None
        )):
            loaded = loaded[wrapper]
        if not isinstance(loaded, dict):
            raise ConversionError(f"{self.path.name} holds a {type(loaded).__name__}, expected a dict of tensors")
        self._tensors = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        self.metadata: dict[str, str] = {}
        self.tensors = {
            name: TensorInfo(tuple(t.shape), _safetensors_dtype(t.dtype))
            for name, t in self._tensors.items()
        }

    def arrays(self, wanted: Collection[str], hasher: "hashlib._Hash | None" = None) -> Iterator[tuple[str, mx.array]]:
        """Yield the wanted tensors once each (each is released as it is yielded, to bound memory)."""
        import torch  # already loaded by __init__

        if hasher:
            hash_file(self.path, hasher)
        for name in [n for n in self._tensors if n in wanted]:
            tensor = self._tensors.pop(name).contiguous()
            info = self.tensors[name]
            raw = tensor.reshape(-1).view(torch.uint8).numpy() if tensor.numel() else b""
            yield name, to_mx(raw, info.dtype, info.shape, name)

