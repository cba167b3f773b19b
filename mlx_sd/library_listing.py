"""What a library holds, described for `mlx-sd models`: each model, LoRA, embedding, VAE and upscaler with
its size on disk, what it is for (a model's and a LoRA's family, an embedding's vectors and width), and,
for a file that cannot be used, its problem in one line instead of a traceback.

Each file is read once (LoRAs and embeddings whole, VAEs and upscalers their safetensors header only),
so describing a library takes time linear in its files. Pickles are read only when allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .embeddings import bundle_phrase, lora_families, read_embedding, vectors_phrase
from .library import KINDS, Library
from .lora import read_lora
from .model_library import FAMILY_LABELS, ModelInfo, ModelLibrary
from .pickle_files import PICKLE_SUFFIXES
from .safetensors_header import read_header

Details = dict[str, "str | int | list[str]"]


@dataclass(frozen=True)
class ListedItem:
    kind: str  # one of mlx_sd.library.KINDS
    name: str  # what --model, --vae, <lora:NAME> or the prompt call it
    path: Path
    size_bytes: int
    details: Details = field(default_factory=dict)  # family, vectors, width, ...
    problem: str = ""  # why it cannot be used; "" when it can

    def summary(self) -> str:
        """The details as one short phrase ("SDXL", "2 vectors of width 768 (SD 1.x)")."""
        if self.kind == "embeddings" and "vectors" in self.details:
            family = f" ({self.details['family']})" if self.details.get("family") else ""
            return f"{vectors_phrase(int(self.details['vectors']), str(self.details['width']))}{family}"
        family = self.details.get("family") or []
        parts = [*(family if isinstance(family, list) else [family]), self.details.get("note", "")]
        return ", ".join(str(part) for part in parts if part)


def describe_library(library: Library, allow_pickle: bool = False) -> dict[str, list[ListedItem]]:
    """Every resource of `library` by kind (KINDS order), each kind sorted as the library lists it."""
    listing = {"models": [_model(info) for info in ModelLibrary(library.root).models()]}
    for kind in KINDS[1:]:
        listing[kind] = [_resource(kind, item.name, item.path, allow_pickle) for item in library.items(kind)]
    return listing


def _model(info: ModelInfo) -> ListedItem:
    details: Details = {"family": info.family_label} if info.usable else {}
    if info.bundled:
        details["note"] = "bundled demo model"
    return ListedItem("models", info.name, info.path, info.size_bytes, details, info.error)


def _resource(kind: str, name: str, path: Path, allow_pickle: bool) -> ListedItem:
    try:
        size = path.stat().st_size
    except OSError as exc:
        return ListedItem(kind, name, path, 0, problem=f"cannot be read ({exc.strerror or exc})")
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        return ListedItem(kind, name, path, size, {"note": "a pickle, not read (--allow-pickle reads it)"})
    try:
        return ListedItem(kind, name, path, size, _details(kind, path, allow_pickle))
    except (ValueError, OSError) as exc:  # LoraError, HeaderError, an unreadable file: one line each
        return ListedItem(kind, name, path, size, problem=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _details(kind: str, path: Path, allow_pickle: bool) -> Details:
    if kind == "loras":
        lora = read_lora(path, allow_pickle)
        details: Details = {"family": [FAMILY_LABELS.get(f, f) for f in sorted(lora_families(lora))] or ["unknown"]}
        if lora.embeddings:
            details["embeddings"], details["note"] = sorted(lora.embeddings), bundle_phrase(lora)
        return details
    if kind == "embeddings":
        embedding = read_embedding(path, allow_pickle)
        return {"vectors": embedding.count, "width": embedding.width_label, "family": FAMILY_LABELS.get(embedding.family, "")}
    if path.suffix.lower() == ".safetensors":
        read_header(path)  # a truncated or damaged file is found here
    return {}
