"""The LoRAs of a pipeline at generation time: what a request asks for (its `loras` and its prompts'
`<lora:...>` tags), found in the library, merged once per change of the set, and named with A1111's
short hashes for the infotext. The embeddings the set's files bundle are handed on to the textual
inversion (mlx_sd.textual_inversion), which makes them usable for exactly the requests that ask for their LoRA.

The set is identified by each file's path, size and modification time and the user's weights, so
generating again with the same LoRAs touches no weight, and a LoRA file replaced on disk is read again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.nn as nn

from ..embeddings import BundledEmbedding
from ..library import Library, file_identity
from ..request import GenerationRequest, LoraRequest
from ..resource_hashes import lora_hash
from .errors import LoraError
from .lora_file import LoraFile, read_lora
from .merge import TEXT_ENCODERS, LoraMerger, LoraUse, Merging
from .prompt_tags import parse_lora_tags


def without_lora_tags(request: GenerationRequest) -> tuple[GenerationRequest, tuple[LoraRequest, ...]]:
    """The request with its prompts' `<lora:...>` tags taken out, and every LoRA it asks for: its
    `loras`, then the prompt's tags, then the negative prompt's. LoraError for a malformed tag."""
    prompt, tags = parse_lora_tags(request.prompt)
    negative, negative_tags = parse_lora_tags(request.negative_prompt)
    stripped = dataclasses.replace(request, prompt=prompt, negative_prompt=negative)
    return stripped, (*request.loras, *tags, *negative_tags)


@dataclass(frozen=True)
class ResourcesInUse:
    """What Pipeline.use_resources found for a request."""

    request: GenerationRequest  # without its prompts' LoRA tags: what the text encoders see
    infotext: dict[str, str]  # `Lora hashes`, `TI hashes`
    notices: list[str]  # for the user: LoRA keys that matched no layer, duplicate names in the library


@dataclass(frozen=True)
class AppliedLoras:
    hashes: dict[str, str]  # LoRA name -> A1111's short hash, for `Lora hashes`
    warnings: list[str]  # keys that matched no layer, as A1111 warns
    changed: bool  # the merged weights changed: encodings made before are stale
    embeddings: dict[str, BundledEmbedding]  # name -> the embedding the set's files bundle under it


class PipelineLoras:
    """The LoRA set merged into one pipeline's models (component name -> model)."""

    def __init__(self, models: Mapping[str, nn.Module], family: str, layers_per_block: int,
                 merging: Merging | None = None):
        self.merger = LoraMerger(models, family, layers_per_block, merging)
        self._key: tuple[tuple[object, ...], ...] | None = ()
        self._hashes: dict[str, str] = {}
        self._embeddings: dict[str, BundledEmbedding] = {}
        self._text_encoder_uses: list[LoraUse] = []  # to merge again into a text encoder loaded afresh

    def use(self, loras: Sequence[LoraRequest], library: Library, allow_pickle: bool = False) -> AppliedLoras:
        """Make `loras` the merged set (none: every LoRA removed). A LibraryError or LoraError (one
        line each) leaves the models as they were, or, when the merge itself failed (out of memory),
        with no LoRA."""
        found = [(lora, library.find("loras", lora.name)) for lora in loras]
        # with pickles allowed or not: a pickle read while they were allowed is not used once they are not
        key = tuple((str(path), file_identity(path), lora.text_encoder_weight, lora.unet_weight, allow_pickle)
                    for lora, path in found)  # fmt: skip
        if key == self._key:
            return AppliedLoras(dict(self._hashes), [], False, dict(self._embeddings))
        files: dict[Path, LoraFile] = {}
        for _, path in found:
            if path not in files:
                files[path] = read_lora(path, allow_pickle)
        uses = [LoraUse(files[path], lora.text_encoder_weight, lora.unet_weight) for lora, path in found]
        try:
            report = self.merger.apply(uses)
        except LoraError:
            if not self.merger.any_merged():  # it failed after undoing the previous set: merge afresh next time
                self._key = None
            raise
        self._key = key
        self._hashes = {file.name: lora_hash(path, file.metadata) for path, file in files.items()}
        self._text_encoder_uses = [use for use in map(self._text_encoder_part, uses) if use is not None]
        self._embeddings = bundled_embeddings(files.values())
        return AppliedLoras(dict(self._hashes), report.warnings(), True, dict(self._embeddings))

    def reloaded(self, component: str, model: nn.Module) -> None:
        """A text encoder was loaded again from its file: merge the current set into it."""
        self.merger.replace_model(component, model)
        uses = [use for use in self._text_encoder_uses if use.text_encoder_weight != 0]
        if uses:
            try:
                self.merger.apply(uses, [component])
            except LoraError:
                self._key = None  # this text encoder has no LoRA now: merge the set afresh next time
                raise

    def _text_encoder_part(self, use: LoraUse) -> LoraUse | None:
        """`use` with only its text encoders' layers (the UNet's tensors need not stay in memory)."""
        index = self.merger.index
        modules = {name: parts for name, parts in use.lora.modules.items()
                   if (index.resolve(name) or ("",))[0] in TEXT_ENCODERS}  # fmt: skip
        if not modules:
            return None
        return dataclasses.replace(use, lora=dataclasses.replace(use.lora, modules=modules, unknown_keys=[]))


def bundled_embeddings(files: Iterable[LoraFile]) -> dict[str, BundledEmbedding]:
    """The embeddings `files` bundle by name; of two LoRAs bundling one name, the first asked for keeps it
    (A1111 skips a bundled name already registered when it loads the LoRAs in the prompt's order)."""
    found: dict[str, BundledEmbedding] = {}
    for file in files:
        for name, tensors in file.embeddings.items():
            found.setdefault(name, BundledEmbedding(name, file.name, tensors))
    return found
