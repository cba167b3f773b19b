"""Hires fix's upscaler models for the engine: a name in the library's `upscalers/` folder or a file
path -> the network, each read once (mlx_sd.pipeline.Pipeline.read_upscaler). The engine reads no
foreign file formats itself; the CLI, the server and the app hand it this."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import mlx.nn as nn
from mlx_sd.upscalers import resolve_upscaler

from .upscaler_file import read_upscaler


def library_upscaler_reader(library: str | os.PathLike[str]) -> Callable[[str], nn.Module]:
    """A reader of the upscaler models of `library` by name or file; a ValueError in one line (listing
    what there is) for a name it cannot find or a file it cannot read."""
    networks: dict[str, nn.Module] = {}

    def read(choice: str) -> nn.Module:
        if choice not in networks:
            found = resolve_upscaler(choice, library)
            if not isinstance(found, Path):
                raise ValueError(f"{choice!r} is a classic filter, not an upscaler model")
            networks[choice] = read_upscaler(found)[0]
        return networks[choice]

    return read
