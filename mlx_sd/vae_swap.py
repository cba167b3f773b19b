"""The VAE a generation decodes with (`GenerationRequest.vae`, `mlx-sd generate --vae NAME|FILE`): the
model's own, or another VAE named in the library's `vae/` folder, given as a file, or a diffusers `vae`
folder. Swapping replaces only the pipeline's VAE (and so its codec); the UNet and text encoders stay.

Reading another format's keys is the converter's job, and the engine must not import it: an entry point
gives the pipeline a `VaeReader` (convert.vae_file.read_vae), which returns the weights already in
our layout. The chosen VAE is kept until another is chosen, and read again only when its file changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import mlx.core as mx
from mlx.utils import tree_unflatten

from .config import ModelConfig
from .library import Library
from .model_format import FileIdentity
from .request import RequestError
from .vae import AutoencoderKL

AUTOMATIC = ("automatic", "none")  # A1111's words for the model's own VAE (any case)
VAE_HASH_LENGTH = 10  # A1111's `VAE hash`: the first 10 hex digits of the file's SHA-256


class VaeError(ValueError):
    """A VAE that cannot be used; one line saying why."""


@dataclass(frozen=True)
class LoadedVae:
    """A VAE read by a VaeReader: parameters under the engine's names, and the SHA-256 of its file."""

    weights: dict[str, mx.array]
    sha256: str


class VaeReader(Protocol):
    def __call__(self, path: Path, model: ModelConfig, dtype: mx.Dtype, allow_pickle: bool) -> LoadedVae:
        """Read the VAE at `path` for a model with `model`'s config, cast to `dtype` (a pickle only with
        `allow_pickle`); a ValueError (one line) when it is no VAE of that model's architecture."""
        ...


@dataclass(frozen=True)
class VaeChoice:
    """A VAE other than the model's own, as the infotext names it."""

    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name  # A1111 writes the file's name, extension included

    def infotext(self) -> dict[str, str]:
        return {"VAE hash": self.sha256[:VAE_HASH_LENGTH], "VAE": self.name}


def vae_path(library: Library, choice: object) -> Path | None:
    """The VAE `choice` names: None (or "Automatic"/"None") for the model's own, else a diffusers `vae`
    folder, a file, or a name in the library's `vae/` folder (LibraryError lists the closest names)."""
    if choice is None:
        return None
    if not isinstance(choice, str):
        raise RequestError("vae", f"a {type(choice).__name__}", "a VAE name, file or folder (a str), or None")
    if choice.strip().casefold() in AUTOMATIC:
        return None
    given = Path(choice).expanduser()
    try:
        if given.is_dir():
            return given
    except OSError:  # a name too long for a path is simply no folder
        pass
    return library.find("vae", choice)


class VaeSwap:
    """Which VAE a pipeline decodes with. `prepare` readies a freshly loaded VAE as the pipeline readies
    its own (the CPU's module swaps, block-wise evaluation)."""

    def __init__(self, config: ModelConfig, prepare: Callable[[AutoencoderKL], AutoencoderKL]):
        self.config = config
        self.prepare = prepare
        self._own: AutoencoderKL | None = None  # the model's VAE while another is swapped in
        self._swapped: tuple[tuple[Path, FileIdentity | None], VaeChoice, AutoencoderKL] | None = None

    def select(
        self, current: AutoencoderKL, path: Path | None, reader: VaeReader | None, allow_pickle: bool = False
    ) -> tuple[AutoencoderKL, VaeChoice | None]:
        """The VAE to use for `path` (None: the model's own) given the pipeline's `current` one, read by
        `reader`; raises before changing anything when the VAE cannot be read."""
        own = self._own or current
        if path is None:
            self._own = self._swapped = None
            return own, None
        key = (path.resolve(), FileIdentity.of(path), allow_pickle)  # a pickle read while allowed: not once refused
        if self._swapped is not None and self._swapped[0] == key:
            return self._swapped[2], self._swapped[1]
        if reader is None:
            raise VaeError(f"cannot read the VAE {path.name}: this pipeline was given no VAE reader")
        loaded = reader(path, self.config, own.dtype, allow_pickle)
        vae = AutoencoderKL(self.config.vae)
        vae.update(tree_unflatten(list(loaded.weights.items())))
        mx.eval(vae.parameters())
        choice = VaeChoice(path, loaded.sha256)
        self._own, self._swapped = own, (key, choice, self.prepare(vae))
        return self._swapped[2], choice
