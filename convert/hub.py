"""Fetching a diffusers pipeline from the Hugging Face Hub: only the files a conversion reads
(configs, tokenizers, safetensors weights of the four model components, in the asked variant). The
local cache is used as huggingface_hub uses it, and HF_HUB_OFFLINE=1 means cache only."""

from __future__ import annotations

import re
from pathlib import Path

from .diffusers_folder import MODEL_INDEX, WEIGHT_NAMES
from .errors import ConversionError

REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_repo_id(text: str) -> bool:
    return bool(REPO_ID_RE.match(text)) and not text.startswith((".", "/"))


def allow_patterns(variant: str | None) -> list[str]:
    """The files of a diffusers repo that a conversion reads."""
    patterns = [MODEL_INDEX, "scheduler/scheduler_config.json", "tokenizer/*", "tokenizer_2/*"]
    for component, base in WEIGHT_NAMES.items():
        patterns.append(f"{component}/config.json")
        if variant:
            patterns += [
                f"{component}/{base}.{variant}.safetensors",
                f"{component}/{base}.safetensors.index.{variant}.json",
                f"{component}/{base}.{variant}-*-of-*.safetensors",
            ]
        else:
            patterns += [
                f"{component}/{base}.safetensors",
                f"{component}/{base}.safetensors.index.json",
                f"{component}/{base}-*-of-*.safetensors",
            ]
    return patterns


def fetch(repo_id: str, revision: str | None, variant: str | None, cache_dir: Path | None) -> Path:
    """Download (or find in the cache) the files a conversion needs; returns the snapshot folder."""
    # imported here: it is slow to import and only this path needs it
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}" + (f" at revision {revision}" if revision else "")
    try:
        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=allow_patterns(variant), cache_dir=cache_dir
        )
    except GatedRepoError:
        raise ConversionError(
            f"{where} is gated: accept its licence on huggingface.co and log in (hf auth login)"
        ) from None
    except RepositoryNotFoundError:
        raise ConversionError(f"{where}: no such repository on the Hugging Face Hub (or it is private)") from None
    except RevisionNotFoundError:
        raise ConversionError(f"{where}: no such revision") from None
    except LocalEntryNotFoundError:
        raise ConversionError(
            f"{where} is not (completely) in the local Hugging Face cache and the Hub cannot be reached "
            "(HF_HUB_OFFLINE is set or the network is down); connect and try again"
        ) from None
    path = Path(folder)
    if not (path / MODEL_INDEX).is_file():
        raise ConversionError(
            f"{where} is not a diffusers pipeline (no model_index.json); download its checkpoint file and convert that"
        )
    return path
