"""Textual-inversion embeddings found in prompts, as A1111 finds them (modules/textual_inversion and
sd_hijack_clip.py): every embedding file of the library's embeddings folders is known by its file name,
tokenised like prompt text; wherever a prompt fragment's tokens continue with a name's tokens, the
embedding's vectors take their place (the longest name first). Each vector counts as one token of the
75-token chunks, and an embedding that does not fit in what is left of a chunk starts the next one.

Only the embeddings a prompt names are read; each is remembered until its file changes. An embedding
of another width than the model's text encoders is refused in one line when a prompt names it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from .embeddings import read_embedding, token_vectors
from .library import Library
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
        self._lookup: dict[str, dict[int, list[tuple[tuple[int, ...], str]]]] = {}  # component -> first id -> names
        self._loaded: dict[Path, tuple[tuple[int, int], dict[str, mx.array]]] = {}  # file -> (identity, vectors)

    def refresh(self, widths: Mapping[str, int]) -> bool:
        """List the folders again; whether the embeddings changed since the last call (encodings stale)."""
        items = self.library.items("embeddings")
        paths = {item.name: item.path for item in items}
        identities = {path: _identity(path) for path in paths.values()}
        stale = [path for path, (identity, _) in self._loaded.items() if identities.get(path) != identity]
        for path in stale:
            del self._loaded[path]
        changed = bool(stale) or paths != self._paths or dict(widths) != self.widths
        if paths != self._paths:
            self._paths = paths
            self._lookup = {component: _lookup(tokenizer, paths) for component, tokenizer in self.tokenizers.items()}
        self.widths = dict(widths)
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
        path = (self._paths or {})[name]
        identity = _identity(path)
        if path not in self._loaded or self._loaded[path][0] != identity:
            embedding = read_embedding(path, self.allow_pickle)
            self._loaded[path] = (identity, token_vectors(embedding, self.widths))
        return self._loaded[path][1]

    def used(self, texts: Sequence[str]) -> dict[str, str]:
        """The embeddings `texts` name -> A1111's short hash (for `TI hashes`), in order of first use;
        reads them, so an unusable one is refused before anything runs."""
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
                    used.setdefault(match.name, embedding_hash((self._paths or {})[match.name]))
                    position += match.length
        return used


def _identity(path: Path) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return (-1, -1)
    return stat.st_size, stat.st_mtime_ns


def _lookup(tokenizer: CLIPTokenizer, paths: Mapping[str, Path]) -> dict[int, list[tuple[tuple[int, ...], str]]]:
    """First token id -> (the name's ids, name), longest names first (A1111's ids_lookup)."""
    lookup: dict[int, list[tuple[tuple[int, ...], str]]] = {}
    for name in paths:
        ids = tuple(tokenizer.tokenize(name))
        if ids:
            lookup.setdefault(ids[0], []).append((ids, name))
    for candidates in lookup.values():
        candidates.sort(key=lambda entry: len(entry[0]), reverse=True)
    return lookup
