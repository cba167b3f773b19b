"""Hires fix's upscaler models for the engine: a name in the library's `upscalers/` folder or a file
path -> the network, each read once (mlx_sd.pipeline.Pipeline.read_upscaler). The engine reads no
foreign file formats itself; the CLI, the server and the app hand it this."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import mlx.nn as nn
from mlx_sd.upscalers import library_upscalers, resolve_upscaler

from .upscaler_file import read_upscaler


def library_upscaler_reader(library: str | os.PathLike[str], files: bool = True) -> Callable[[str], nn.Module]:
    """A reader of the upscaler models of `library` by name, and by file path unless `files` is False
    (the server: clients name only what the library holds); a ValueError in one line (listing what
    there is) for a name it cannot find or a file it cannot read."""
    networks: dict[str, nn.Module] = {}

    def read(choice: str) -> nn.Module:
        if choice not in networks:
            found = resolve_upscaler(choice, library) if files else library_upscalers(library).get(choice)
            if not isinstance(found, Path):
                available = ", ".join(library_upscalers(library)) or "none"
                raise ValueError(f"{choice!r} is no upscaler model of the library (it has: {available})")
            networks[choice] = read_upscaler(found)[0]
        return networks[choice]

    return read
