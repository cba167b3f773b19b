"""Torch pickle files (`.ckpt`, `.pt`, `.pth`, `.bin`): which names are pickles, and the one line that refuses
them unless the user allows pickles. Shared by the converter and mlx_sd.lora, so both say it alike."""

from __future__ import annotations

from pathlib import Path

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class PickleRefused(Exception):
    """Mixed into the errors that refuse a pickle (mlx_sd.lora's, the converter's), so that a front end
    other than the CLI can say in its own words how to allow pickles; `path` is the file."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


def pickle_refusal(path: Path) -> str:
    return (
        f"{path.name} is a pickle checkpoint ({path.suffix}): loading a pickle can run code hidden in the file. "
        "Prefer a .safetensors version of this model; if you trust this file, add --allow-pickle "
        "(it is then read with torch's weights-only unpickler, which never runs code)"
    )


def is_pickle(path: Path) -> bool:
    return path.suffix.lower() in PICKLE_SUFFIXES
