"""Textual-inversion embeddings as users download them, read into per-text-encoder token vectors.

- A1111 `.pt` (a pickle, read only when allowed, with the weights-only unpickler):
  `{"string_to_param": {"*": (n, width)}, ...}`; older files hold `{"<token>": tensor}` directly, and
  diffusers' `learned_embeds.bin` one `(width,)` vector.
- `.safetensors`: `emb_params` (n, width); SDXL embeddings a pair `clip_l` (n, 768) and `clip_g` (n, 1280),
  for the first and second text encoder.
- LoRAs may bundle embeddings (`bundle_emb.<name>.<any of the above>`, mlx_sd.lora.LoraFile.embeddings),
  usable while their LoRA is (`BundledEmbedding`, mlx_sd.textual_inversion).

Each of the n vectors stands for one token of the prompt (A1111 counts them in its 75-token chunks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from .lora.errors import LoraError
from .lora.files import read_tensors, refuse_checkpoint
from .lora.lora_file import LoraFile

# SDXL pairs: file key -> the text encoder it is for.
_PAIR = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}
_SINGLE_KEYS = ("emb_params", "string_to_param.*")
# A single text encoder's width -> the family whose text encoder has it (SD 1.x's CLIP ViT-L/14, SD 2.x's
# OpenCLIP ViT-H/14); a pair is SDXL's.
_FAMILY_BY_WIDTH = {768: "sd1", 1024: "sd2"}


@dataclass(frozen=True)
class Embedding:
    name: str  # the file name without its extension, the word for it in prompts (a bundled one's says its LoRA)
    vectors: dict[str, mx.array]  # text encoder component -> (n, width) float32; one entry unless a pair

    @property
    def count(self) -> int:
        """Tokens it takes in the prompt."""
        return next(iter(self.vectors.values())).shape[0]

    @property
    def widths(self) -> dict[str, int]:
        """Text encoder component -> the width of its vectors."""
        return {component: int(v.shape[1]) for component, v in self.vectors.items()}

    @property
    def width_label(self) -> str:
        """"768", or a pair's "768+1280"."""
        return "+".join(str(width) for width in self.widths.values())

    @property
    def family(self) -> str:
        """The family whose text encoders take it ("sd1", "sd2", "sdxl"); "" for another width."""
        if set(self.vectors) == set(_PAIR.values()):
            return "sdxl"
        return _FAMILY_BY_WIDTH.get(self.widths.get("text_encoder", 0), "")

    def shape_phrase(self) -> str:
        return vectors_phrase(self.count, self.width_label)


def vectors_phrase(count: int, width_label: str) -> str:
    """An embedding's size in words: "1 vector of width 768", "3 vectors of width 768+1280"."""
    return f"{count} {'vector' if count == 1 else 'vectors'} of width {width_label}"


def embedding_from_tensors(name: str, tensors: Mapping[str, mx.array]) -> Embedding:
    """An embedding from a file's (or a LoRA's bundle's) tensors; LoraError when none is recognisable."""
    if all(key in tensors for key in _PAIR):
        vectors = {component: tensors[key] for key, component in _PAIR.items()}
    else:
        key = next((key for key in _SINGLE_KEYS if key in tensors), None)
        params = [k for k in tensors if k.startswith("string_to_param.")]
        if key is None and len(params) == 1:
            key = params[0]
        if key is None and len(tensors) == 1:
            key = next(iter(tensors))  # old A1111 `{"<token>": tensor}`, diffusers' learned_embeds.bin
        if key is None:
            shown = ", ".join(sorted(tensors)[:4]) or "nothing"
            raise LoraError(
                f"{name} is not a textual-inversion embedding (expected string_to_param, emb_params or clip_l and "
                f"clip_g; found {shown})"
            )
        vectors = {"text_encoder": tensors[key]}
    vectors = {c: (v.reshape(1, -1) if v.ndim == 1 else v).astype(mx.float32) for c, v in vectors.items()}
    if any(v.ndim != 2 for v in vectors.values()) or len({v.shape[0] for v in vectors.values()}) != 1:
        shapes = ", ".join(str(list(v.shape)) for v in vectors.values())
        raise LoraError(f"{name}: embedding vectors must be (count, width) and the pair's counts equal; found {shapes}")
    return Embedding(name, vectors)


def lora_families(lora: LoraFile) -> set[str]:
    """The families a LoRA file is for: its layers' (LoraFile.families), or, where they do not tell
    (a file of bundled embeddings only), its bundled embeddings' widths. LoraError for a bundle that
    is not an embedding."""
    bundled = {embedding_from_tensors(name, tensors).family for name, tensors in lora.embeddings.items()}
    return lora.families() or bundled - {""}


def bundle_phrase(lora: LoraFile) -> str:
    """The embeddings a LoRA file bundles, in words ("bundles EasyNegative, bad-hands"); "" for none."""
    return f"bundles {', '.join(sorted(lora.embeddings))}" if lora.embeddings else ""


@dataclass(frozen=True, eq=False)  # compared by identity: the same LoRA set gives the same objects
class BundledEmbedding:
    """An embedding a LoRA file carries, named `name` in prompts while that LoRA is in the request."""

    name: str
    lora: str  # the LoRA's name: A1111 writes it in `TI hashes` in place of the embedding's hash
    tensors: Mapping[str, mx.array]  # the keys after `bundle_emb.<name>.`

    def embedding(self) -> Embedding:
        """Its vectors; a LoraError naming the LoRA too when they are not an embedding's."""
        return embedding_from_tensors(f"{self.name} (bundled in the LoRA {self.lora})", self.tensors)


def read_embedding(path: str | Path, allow_pickle: bool = False) -> Embedding:
    file = read_tensors(path, allow_pickle)
    refuse_checkpoint(file, "textual-inversion embedding")
    return embedding_from_tensors(file.path.stem, file.tensors)


def token_vectors(embedding: Embedding, widths: Mapping[str, int]) -> dict[str, mx.array]:
    """The embedding's vectors for each of the model's text encoders (`widths`: component -> hidden size);
    a LoraError when the embedding was made for text encoders of other widths."""
    have = {c: v.shape[1] for c, v in embedding.vectors.items()}
    want = dict(widths)
    if have != want:
        def describe(sizes: Mapping[str, int]) -> str:
            return " and ".join(str(size) for size in sizes.values())

        raise LoraError(
            f"{embedding.name} is an embedding of width {describe(have)}; the loaded model's text "
            f"encoder{'s' if len(want) > 1 else ''} {'have' if len(want) > 1 else 'has'} width {describe(want)}"
        )
    return dict(embedding.vectors)
