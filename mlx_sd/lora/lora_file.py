"""A LoRA file read and grouped: its layers' parts, its bundled embeddings, the family it was made for."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from .errors import LoraError
from .files import TensorFile, read_tensors, refuse_checkpoint
from .names import BUNDLED_EMBEDDING_PREFIX, split_key

FAMILY_LABELS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sdxl-refiner": "SDXL refiner"}
# Cross-attention context width -> family (docs/facts.md §1.2's table).
_CONTEXT_FAMILY = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl-refiner"}
_SDXL_MARKERS = ("lora_te1_", "lora_te2_", "text_encoder_2.", "lora_unet_add_embedding", "lora_unet_label_emb",
                 "unet.add_embedding")  # fmt: skip


@dataclass
class LoraFile:
    path: Path
    modules: dict[str, dict[str, mx.array]]  # module name as in the file -> part name -> tensor
    unknown_keys: list[str]  # keys with no LoRA part (reported, not fatal)
    embeddings: dict[str, dict[str, mx.array]]  # bundle_emb.<name>.<rest> -> name -> rest -> tensor
    metadata: dict[str, str]

    @property
    def name(self) -> str:
        return self.path.stem

    def families(self) -> set[str]:
        """The families this LoRA can be for, from its keys and shapes; empty when they do not tell."""
        if any(module.startswith(_SDXL_MARKERS) for module in self.modules):
            return {"sdxl"}
        for module, parts in self.modules.items():
            if ("attn2_to_k" in module or "attn2.to_k" in module) and "down" in parts:
                family = _CONTEXT_FAMILY.get(parts["down"].shape[1])
                if family:
                    return {family}
        if any(module.startswith(("lora_te_", "text_encoder.")) for module in self.modules):
            return {"sd1", "sd2"}  # one text encoder: not SDXL
        return set()


def read_lora(path: str | Path, allow_pickle: bool = False) -> LoraFile:
    return group_lora(read_tensors(path, allow_pickle))


def group_lora(file: TensorFile) -> LoraFile:
    refuse_checkpoint(file, "LoRA")
    modules: dict[str, dict[str, mx.array]] = defaultdict(dict)
    embeddings: dict[str, dict[str, mx.array]] = defaultdict(dict)
    unknown = []
    for key, tensor in file.tensors.items():
        if key.startswith(BUNDLED_EMBEDDING_PREFIX):
            name, _, rest = key[len(BUNDLED_EMBEDDING_PREFIX):].partition(".")
            embeddings[name][rest] = tensor
            continue
        split = split_key(key)
        if split is None:
            unknown.append(key)
        else:
            modules[split[0]][split[1]] = tensor
    if not modules and not embeddings:
        example = f" (first key: {next(iter(file.tensors))})" if file.tensors else ""
        raise LoraError(f"{file.path.name} holds no LoRA weights{example}")
    return LoraFile(file.path, dict(modules), unknown, dict(embeddings), file.metadata)
