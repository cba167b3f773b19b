"""Textual-inversion embeddings found in prompts, as A1111 finds them (modules/textual_inversion and
sd_hijack_clip.py): every embedding file of the library's embeddings folders is known by its file name,
tokenised like prompt text; wherever a prompt fragment's tokens continue with a name's tokens, the
embedding's vectors take their place (the longest name first). Each vector counts as one token of the
75-token chunks, and an embedding that does not fit in what is left of a chunk starts the next one.

Only the embeddings a prompt names are read; each is remembered until its file changes. An embedding
of another width than the model's text encoders is refused in one line when a prompt names it.

The embeddings bundled in the request's LoRAs are known by their bundled names as long as those LoRAs
are in the requests (`refresh`), as A1111 registers them when it loads the LoRA. A library embedding of
the same name wins: A1111 skips a bundled one whose name the embeddings folder already has. `TI hashes`
names a bundled one's LoRA in place of a hash (A1111's default, `lora_bundled_ti_to_infotext`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from .embeddings import BundledEmbedding, read_embedding, token_vectors
from .library import Library, file_identity
from .lora.errors import LoraError
from .prompt_parser import Fragment, parse_prompt_attention
from .resource_hashes import embedding_hash
from .tokenizer import CLIPTokenizer

CHUNK_TOKENS = 75  # as conditioning.CHUNK_TOKENS: an embedding longer than a chunk cannot be placed


@dataclass(frozen=True)
class EmbeddingMatch:
    name: str
    length: int  # prompt tokens its name takes
    vectors: mx.array  # (count, width) for the encoder that asked


class TextualInversion:
    """The library's embeddings for one model, whose `tokenizers` are given by text-encoder component
    in the model's order; `refresh` sets the encoders' widths (component -> hidden size)."""

    def __init__(self, library: Library, tokenizers: Mapping[str, CLIPTokenizer], allow_pickle: bool = False):
        self.library = library
        self.tokenizers = dict(tokenizers)
        self.allow_pickle = allow_pickle
        self.widths: dict[str, int] = {}
        self._paths: dict[str, Path] | None = None  # name -> file; None before the first refresh
        self._bundled: dict[str, BundledEmbedding] = {}  # the LoRAs' in use, less the names the library has
        self._bundled_vectors: dict[str, dict[str, mx.array]] = {}  # of those named so far
        self._lookup: dict[str, dict[int, list[tuple[tuple[int, ...], str]]]] = {}  # component -> first id -> names
        self._loaded: dict[Path, tuple[tuple[int, int] | None, dict[str, mx.array]]] = {}  # file -> (identity, vectors)

    def refresh(self, widths: Mapping[str, int], bundled: Mapping[str, BundledEmbedding] | None = None) -> bool:
        """List the folders again and take `bundled` (the request's LoRAs' embeddings by name) as the
        bundled ones in use; whether the embeddings changed since the last call (encodings stale)."""
        items = self.library.items("embeddings")
        paths = {item.name: item.path for item in items}
        identities = {path: file_identity(path) for path in paths.values()}
        stale = [path for path, (identity, _) in self._loaded.items() if identities.get(path) != identity]
        for path in stale:
            del self._loaded[path]
        bundled = {name: embedding for name, embedding in (bundled or {}).items() if name not in paths}
        changed = bool(stale) or paths != self._paths or dict(widths) != self.widths or bundled != self._bundled
        if paths != self._paths or bundled.keys() != self._bundled.keys():
            names = [*paths, *bundled]  # the library's first: of two names alike once tokenised, it wins
            self._lookup = {component: _lookup(tokenizer, names) for component, tokenizer in self.tokenizers.items()}
        if bundled != self._bundled or dict(widths) != self.widths:
            self._bundled_vectors = {}
        self._paths, self._bundled, self.widths = paths, bundled, dict(widths)
        return changed

    def find(self, component: str, tokens: Sequence[int], position: int) -> EmbeddingMatch | None:
        """The embedding whose name's tokens start at `position`, with its vectors for `component`."""
        for ids, name in self._lookup.get(component, {}).get(tokens[position], ()):
            if tuple(tokens[position : position + len(ids)]) == ids:
                vectors = self.vectors(name)[component]
                if vectors.shape[0] > CHUNK_TOKENS:
                    raise LoraError(f"{name} has {vectors.shape[0]} vectors; a prompt chunk holds {CHUNK_TOKENS}")
                return EmbeddingMatch(name, len(ids), vectors)
        return None

    def vectors(self, name: str) -> dict[str, mx.array]:
        if name in self._bundled:
            if name not in self._bundled_vectors:
                self._bundled_vectors[name] = token_vectors(self._bundled[name].embedding(), self.widths)
            return self._bundled_vectors[name]
        path = (self._paths or {})[name]
        identity = file_identity(path)
        if path not in self._loaded or self._loaded[path][0] != identity:
            embedding = read_embedding(path, self.allow_pickle)
            self._loaded[path] = (identity, token_vectors(embedding, self.widths))
        return self._loaded[path][1]

    def used(self, texts: Sequence[str]) -> dict[str, str]:
        """The embeddings `texts` name -> A1111's short hash (for `TI hashes`; a bundled one's LoRA name),
        in order of first use; reads them, so an unusable one is refused before anything runs."""
        component, tokenizer = next(iter(self.tokenizers.items()))
        used: dict[str, str] = {}
        for text in texts:
            for item in parse_prompt_attention(text):
                if not isinstance(item, Fragment):
                    continue
                tokens = tokenizer.tokenize(item.text)
                position = 0
                while position < len(tokens):
                    match = self.find(component, tokens, position)
                    if match is None:
                        position += 1
                        continue
                    if match.name not in used:
                        bundled = self._bundled.get(match.name)
                        used[match.name] = bundled.lora if bundled else embedding_hash((self._paths or {})[match.name])
                    position += match.length
        return used


def _lookup(tokenizer: CLIPTokenizer, names: Sequence[str]) -> dict[int, list[tuple[tuple[int, ...], str]]]:
    """First token id -> (the name's ids, name), longest names first (A1111's ids_lookup; of equal
    lengths, the earlier name first)."""
    lookup: dict[int, list[tuple[tuple[int, ...], str]]] = {}
    for name in names:
        ids = tuple(tokenizer.tokenize(name))
        if ids:
            lookup.setdefault(ids[0], []).append((ids, name))
    for candidates in lookup.values():
        candidates.sort(key=lambda entry: len(entry[0]), reverse=True)
    return lookup
