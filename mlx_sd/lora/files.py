"""Reading a LoRA file as users download it: `.safetensors`, or a torch pickle (`.pt`, `.ckpt`, `.bin`)
read with the weights-only unpickler and only when the user allows pickles.

Every tensor comes back as an mlx array in its stored dtype; the delta math upcasts to float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
from safetensors import SafetensorError, safe_open

from ..pickle_files import PICKLE_SUFFIXES, PickleRefused, pickle_refusal
from .errors import LoraError

# Keys only a whole checkpoint has: a model passed where a LoRA was expected.
_CHECKPOINT_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders.")


class LoraPickleRefused(PickleRefused, LoraError):
    """A LoRA or embedding in a pickle while pickles are not allowed."""


@dataclass
class TensorFile:
    """A file's tensors by key, and its safetensors `__metadata__` (empty for pickles)."""

    path: Path
    tensors: dict[str, mx.array]
    metadata: dict[str, str] = field(default_factory=dict)


def read_tensors(path: str | Path, allow_pickle: bool = False) -> TensorFile:
    """All tensors of a LoRA or embedding file, or a LoraError saying in one line why not."""
    path = Path(path)
    if not path.is_file():
        raise LoraError(f"{path} does not exist or is not a file")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _read_pickle(path, allow_pickle)
    try:
        with safe_open(str(path), framework="mlx") as file:
            tensors = {key: file.get_tensor(key) for key in file.keys()}
            metadata = dict(file.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise LoraError(f"{path.name} cannot be read as a safetensors file (truncated or damaged? {detail})") from None
    return TensorFile(path, tensors, metadata)


def refuse_checkpoint(file: TensorFile, what: str) -> None:
    """A whole model's file where a LoRA or embedding was expected gets one clear line."""
    for key in file.tensors:
        if key.startswith(_CHECKPOINT_PREFIXES):
            raise LoraError(
                f"{file.path.name} is a full model checkpoint (it has {key}), not a {what}: import it as a model instead"
            )


def _read_pickle(path: Path, allow_pickle: bool) -> TensorFile:
    # torch's weights-only unpickler (as the converter uses) builds only tensors and plain containers.
    # Nested dicts (an embedding's `string_to_param`) flatten to dotted keys.
    if not allow_pickle:
        raise LoraPickleRefused(pickle_refusal(path), path)
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise LoraError(f"{path.name} cannot be read as a weights-only torch file ({detail})") from None
    if not isinstance(loaded, dict):
        raise LoraError(f"{path.name} holds a {type(loaded).__name__}, expected a dict of tensors")
    tensors: dict[str, mx.array] = {}
    pending = [("", loaded)]
    while pending:
        prefix, tree = pending.pop()
        for key, value in tree.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                pending.append((f"{name}.", value))
            elif isinstance(value, torch.Tensor):
                tensors[name] = mx.array(value.detach().float().numpy()) if value.is_floating_point() else mx.array(value.numpy())
    return TensorFile(path, tensors)
