"""The tokenizer folders a converted model carries: copied from a diffusers folder, or the bundled CLIP
vocabulary for single files (every SD text encoder uses the same 49408-token CLIP BPE)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mlx_sd.tokenizer import BUNDLED_FOLDER, EOS_TOKEN, read_json

from .errors import ConversionError


def bundled(pad_token: str, staging: Path) -> Path:
    """A copy of the bundled vocabulary whose tokenizer_config names `pad_token`, under `staging`."""
    if not (BUNDLED_FOLDER / "vocab.json").is_file():
        raise ConversionError(f"the bundled CLIP vocabulary is missing from {BUNDLED_FOLDER}; reinstall mlx-sd")
    folder = staging / ("clip_tokenizer" if pad_token == EOS_TOKEN else "clip_tokenizer_pad0")
    if not folder.exists():
        shutil.copytree(BUNDLED_FOLDER, folder)
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        config["pad_token"] = pad_token
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder


def pad_token_id(folder: Path) -> int | None:
    """The pad id a diffusers tokenizer folder declares, or None if it does not say."""
    pad = None
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if pad is None and path.is_file():
            found = read_json(path)
            pad = found.get("pad_token") if isinstance(found, dict) else None
    if isinstance(pad, dict):
        pad = pad.get("content")
    vocab_path = folder / "vocab.json"
    if not isinstance(pad, str) or not vocab_path.is_file():
        return None
    vocab = read_json(vocab_path)
    found = vocab.get(pad) if isinstance(vocab, dict) else None
    return found if isinstance(found, int) and not isinstance(found, bool) else None


def check_folder(folder: Path, component: str) -> Path:
    bpe_files = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not bpe_files and not (folder / "tokenizer.json").is_file():
        raise ConversionError(f"{component}: {folder} has no vocab.json + merges.txt (or tokenizer.json)")
    return folder
