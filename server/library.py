"""The library as the API names it: models by name (mlx_sd.model_library, demo model included), and
the LoRA, VAE, embedding and upscaler files as the shared library lists them (mlx_sd.library: the same
folders, suffixes and names as the CLI and the app).

A name from a request is only ever looked up among the names listed here, so no request reaches a
file outside the library (ModelLibrary.path_of also refuses separators and hidden names).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from mlx_sd.infotext import checkpoint_stem, model_hash
from mlx_sd.library import Library as Resources
from mlx_sd.library import LibraryError
from mlx_sd.model_format import ModelFolderError, read_config
from mlx_sd.model_library import ModelInfo, ModelLibrary
from mlx_sd.request import GenerationRequest


class UnknownModelError(ValueError):
    """A model name that is not in the library; the message lists what is."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    folder: Path
    sha256: str  # of the source checkpoint, "" when the converter did not record it

    @property
    def hash(self) -> str | None:
        return model_hash(self.sha256) if self.sha256 else None

    @property
    def title(self) -> str:
        """A1111's checkpoint title: `name [hash]`, or the name alone without a hash."""
        return f"{self.name} [{self.hash}]" if self.hash else self.name

    def sd_model(self) -> dict[str, object]:
        """One entry of GET /sdapi/v1/sd-models."""
        return {
            "title": self.title,
            "model_name": self.name,
            "hash": self.hash,
            "sha256": self.sha256 or None,
            "filename": str(self.folder),
            "config": None,
        }


class Library:
    """One library folder; every call reads the disk afresh (so refresh endpoints have nothing to do)."""

    def __init__(self, folder: Path, models: ModelLibrary | None = None):
        self.folder = folder
        self._models = models or ModelLibrary(folder)
        self.resources = Resources(folder)

    def models(self) -> list[ServedModel]:
        return [served for info in self._models.models() if (served := _served(info)) is not None]

    def model(self, name: str) -> ServedModel:
        """The model a request names: its name, its A1111 title ("name [hash]") or the hash alone."""
        wanted = str(name).strip()
        available = self.models()
        for model in available:
            if wanted in (model.name, model.title) or (model.hash and wanted == model.hash):
                return model
        names = ", ".join(m.name for m in available) or f"none; convert one into {self._models.folder}"
        raise UnknownModelError(f"there is no model called {wanted!r} in the library; available: {names}")

    def files(self, kind: str) -> list[Path]:
        """The files of one kind of mlx_sd.library.KINDS ("loras", "vae", ...), as the library lists them."""
        return [item.path for item in self.resources.items(kind)]


    def with_vae_file(self, request: GenerationRequest) -> GenerationRequest:
        """`request` with its VAE name (A1111's sd_vae: a file name or stem) replaced by that library file;
        a name outside the library's vae/ folder is refused, so no request reads another file."""
        if request.vae is None:
            return request
        wanted = checkpoint_stem(request.vae)
        found = {path.stem: path for path in self.files("vae")}
        if wanted not in found:
            names = ", ".join(found) or f"none; put VAE files in {self.resources.folder('vae')}"
            raise LibraryError(f"there is no VAE called {request.vae!r} in the library; available: {names}")
        return dataclasses.replace(request, vae=str(found[wanted]))


def _served(info: ModelInfo) -> ServedModel | None:
    if not info.usable:
        return None
    try:
        sha256 = read_config(info.path).source.sha256
    except (ModelFolderError, OSError):  # deleted or damaged since it was listed
        return None
    return ServedModel(info.name, info.path, sha256)

