"""What the LoRA panel shows about each LoRA and embedding of the library: the families it is for, its
trigger words, its preview image, or the one-line problem of a damaged file. Qt-free; reading a file
takes a while (its tensors are read), so the app calls `read_info` on a worker and keeps the answers in
an `InfoCache` keyed by the file's path, modification time and size (and, for a pickle, whether pickles
are allowed: Settings > Allow pickle files).

Also the check behind restoring a PNG's parameters: which LoRAs and embeddings it names are missing.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mlx_sd.embeddings import bundle_phrase, lora_families, read_embedding
from mlx_sd.infotext import Infotext, resource_hashes
from mlx_sd.library import LABELS, Library, LibraryItem
from mlx_sd.lora import LoraError, read_lora
from mlx_sd.pickle_files import is_pickle

from mlx_sd.model_library import FAMILY_LABELS
from .prompt_loras import prompt_loras

TRIGGER_COUNT = 4  # the most frequent training tags shown
PREVIEW_SUFFIXES = (".preview.png", ".png")  # beside NAME.safetensors, as A1111's Extra Networks looks
PICKLE_OFF = "a pickle file: enable 'Allow pickle files' in Settings to use it"

CacheKey = tuple[str, int, int, bool]  # path, modification time, size, whether it was read as a pickle


@dataclass(frozen=True)
class ResourceInfo:
    kind: str  # "loras" or "embeddings"
    name: str
    path: Path
    families: frozenset[str] = frozenset()  # empty: the file does not tell
    triggers: tuple[str, ...] = ()
    preview: Path | None = None
    error: str = ""  # the file's one-line problem
    loaded: bool = True  # False until the file has been read
    refused: str = ""  # why it was not read (a pickle while pickles are not allowed)
    note: str = ""  # an embedding's vectors and width ("2 vectors of width 768"), the embeddings a LoRA bundles

    def unsuitable_for(self, family: str | None) -> str:
        """Why it cannot be used with a model of `family` ("" when it can, or when either is unknown)."""
        if self.error or self.refused:
            return self.error or self.refused
        if not family or not self.families or family in self.families:
            return ""
        made_for = " or ".join(sorted(FAMILY_LABELS.get(f, f) for f in self.families))
        return f"This {LABELS[self.kind]} is for {made_for}; the model is {FAMILY_LABELS.get(family, family)}"


def cache_key(path: Path, allow_pickle: bool = False) -> CacheKey | None:
    """What `read_info(item, allow_pickle)`'s answer depends on; None for a file that is gone."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (str(path), stat.st_mtime_ns, stat.st_size, allow_pickle and is_pickle(path))


def preview_of(path: Path) -> Path | None:
    """NAME.preview.png, else NAME.png, beside the file."""
    for suffix in PREVIEW_SUFFIXES:
        candidate = path.with_name(path.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def trigger_words(metadata: dict[str, str], count: int = TRIGGER_COUNT) -> tuple[str, ...]:
    """`modelspec.trigger_phrase` first, then kohya's most frequent training tags (`ss_tag_frequency`:
    {"<dataset>": {"<tag>": <count>}}); a malformed value is skipped."""
    words = [w.strip() for w in metadata.get("modelspec.trigger_phrase", "").split(",") if w.strip()]
    try:
        datasets = json.loads(metadata.get("ss_tag_frequency", "") or "{}")
    except ValueError:
        datasets = {}
    totals: Counter[str] = Counter()
    if isinstance(datasets, dict):
        for tags in datasets.values():
            if isinstance(tags, dict):
                totals.update({str(t).strip(): n for t, n in tags.items() if isinstance(n, int) and str(t).strip()})
    for word, _ in totals.most_common():
        if len(words) >= count:
            break
        if word not in words:
            words.append(word)
    return tuple(words[:count])


def read_info(item: LibraryItem, allow_pickle: bool = False) -> ResourceInfo:
    """Everything the panel shows about one LoRA or embedding; a damaged file gives its problem in
    `error`, never an exception. Pickles are read (with the weights-only unpickler, which runs no code)
    only with `allow_pickle`; otherwise `refused` says how to allow them."""
    preview = preview_of(item.path)
    if is_pickle(item.path) and not allow_pickle:
        return ResourceInfo(item.kind, item.name, item.path, preview=preview, refused=PICKLE_OFF)
    try:
        if item.kind == "loras":
            lora = read_lora(item.path, allow_pickle)
            families, triggers = frozenset(lora_families(lora)), trigger_words(lora.metadata)
            note = bundle_phrase(lora)
        else:
            embedding = read_embedding(item.path, allow_pickle)
            families = frozenset({embedding.family} - {""})
            triggers, note = (), embedding.shape_phrase()
    except (LoraError, OSError, MemoryError) as exc:
        return ResourceInfo(item.kind, item.name, item.path, preview=preview, error=str(exc).splitlines()[0])
    return ResourceInfo(item.kind, item.name, item.path, families, triggers, preview, note=note)


class InfoCache:
    """Answers of `read_info` by (path, mtime, size): a file changed on disk is read again."""

    def __init__(self) -> None:
        self._infos: dict[CacheKey, ResourceInfo] = {}

    def get(self, key: CacheKey | None) -> ResourceInfo | None:
        return self._infos.get(key) if key is not None else None

    def put(self, key: CacheKey | None, info: ResourceInfo) -> None:
        if key is not None:
            self._infos[key] = info


def missing_resources(info: Infotext, library: Library) -> list[str]:
    """Notes naming the LoRAs (tags in the prompts, `Lora hashes`) and embeddings (`TI hashes`) that an
    infotext uses and the library lacks; empty when all are there. An embedding bundled in a LoRA has the
    LoRA's name for its hash (A1111): the LoRA stands for it."""
    loras = [t.name for t in prompt_loras(f"{info.prompt}\n{info.negative_prompt}")]
    loras += list(resource_hashes(info.params, "Lora hashes"))
    embeddings = [name for name, short in resource_hashes(info.params, "TI hashes").items() if short not in loras]
    wanted = {"loras": loras, "embeddings": embeddings}
    notes = []
    for kind, names in wanted.items():
        have = {item.name.casefold() for item in library.items(kind)}
        missing = [n for n in dict.fromkeys(names) if n and n.casefold() not in have]
        if missing:
            plural = "s are" if len(missing) > 1 else " is"
            notes.append(f"the {LABELS[kind]}{plural} not in the library: {', '.join(missing)}")
    return notes


def folder_hint(library: Library) -> str:
    return f"{library.folder('loras')}{os.sep} and {library.folder('embeddings')}{os.sep}"
