"""Torch pickle files (`.ckpt`, `.pt`, `.pth`, `.bin`): which names are pickles, and the one line that refuses
them unless the user allows pickles. Shared by the converter and mlx_sd.lora, so both say it alike."""

from __future__ import annotations

from pathlib import Path

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def pickle_refusal(path: Path) -> str:
    return (
        f"{path.name} is a pickle checkpoint ({path.suffix}): loading a pickle can run code hidden in the file. "
        "Prefer a .safetensors version of this model; if you trust this file, add --allow-pickle "
        "(it is then read with torch's weights-only unpickler, which never runs code)"
    )


def is_pickle(path: Path) -> bool:
    return path.suffix.lower() in PICKLE_SUFFIXES
