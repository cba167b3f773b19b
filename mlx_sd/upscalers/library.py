"""Upscaler models in the library: the files in `<library>/upscalers/`, named by their file name
without its suffix ("4x-UltraSharp" for 4x-UltraSharp.pth), beside the classic filters."""

from __future__ import annotations

import os
from pathlib import Path

from ..library import SUFFIXES, Library
from .resize import CLASSIC_FILTERS

UPSCALERS_DIR = "upscalers"
MODEL_SUFFIXES = SUFFIXES[UPSCALERS_DIR]  # how upscaler models are published


def library_upscalers(library: str | os.PathLike[str]) -> dict[str, Path]:
    """The upscaler models of a library, by name, sorted; an absent folder has none."""
    items = Library(Path(library)).items(UPSCALERS_DIR)
    return {item.name: item.path for item in sorted(items, key=lambda item: item.name.lower())}


def resolve_upscaler(choice: str, library: str | os.PathLike[str]) -> str | Path:
    """What the user's `choice` names: a classic filter (its canonical name; any case), a model file
    (a path to an existing file), or a model of the library by name (exact, else in any case).

    Raises ValueError in one line listing the available names when it names none of them."""
    filters = {name.lower(): name for name in CLASSIC_FILTERS}
    if choice.lower() in filters:
        return filters[choice.lower()]
    path = Path(choice).expanduser()
    if path.is_file():
        return path
    models = library_upscalers(library)
    if choice in models:
        return models[choice]
    matches = [p for name, p in models.items() if name.lower() == choice.lower()]
    if len(matches) == 1:
        return matches[0]
    if path.suffix.lower() in MODEL_SUFFIXES or os.sep in choice:
        raise ValueError(f"upscaler model file {path} does not exist")
    available = ", ".join([*CLASSIC_FILTERS, *models])
    raise ValueError(
        f"unknown upscaler {choice!r}: available are {available} "
        f"(models are the {', '.join(MODEL_SUFFIXES)} files in {Path(library) / UPSCALERS_DIR})"
    )
