"""The library's converted models, Qt-free: list, name, rename and delete the folders under
`<library>/models/`, plus the bundled demo model (resources/demo/) when it is present.

    <library>/models/<name>/model.json     one converted model per folder (mlx_sd.model_format)
    <library>/models/.<name>.partial-*     a conversion in progress (the converter's staging folder)
    <library>/models/.deleting-*           a delete in progress (finished on the next start)

Hidden folders are never listed. A folder whose model.json is missing or damaged is listed with its
error, so the user can see it and delete it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from mlx_sd.infotext import checkpoint_stem
from mlx_sd.model_format import ModelFolderError, make_files_read_only, read_config
from mlx_sd.model_paths import DEMO_FOLDER, DEMO_NAME, demo_available

MODELS_DIR = "models"
DELETING_PREFIX = ".deleting-"
MAX_NAME_LENGTH = 100
FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sdxl-refiner": "SDXL refiner"}


class ModelLibraryError(ValueError):
    """A rename or delete that cannot be done; the message says why."""


@dataclass(frozen=True)
class ModelInfo:
    name: str  # folder name under models/, or DEMO_NAME for the bundled model
    path: Path
    family: str = ""  # "" when the folder is damaged
    native_size: int = 0  # the model's default (training) resolution, square
    precision: str = ""  # storage dtype of the weights
    prediction_type: str = ""
    in_channels: int = 4
    source: str = ""  # the checkpoint or repo it was converted from
    size_bytes: int = 0
    bundled: bool = False
    error: str = ""  # why the folder cannot be used; "" for a usable model

    @property
    def usable(self) -> bool:
        return not self.error

    @property
    def family_label(self) -> str:
        label = FAMILY_LABELS.get(self.family, self.family)
        return f"{label} inpainting" if self.in_channels == 9 else label


def folder_size(folder: Path) -> int:
    """Bytes of every file under `folder` (symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
    return total


def describe(folder: Path, name: str, bundled: bool = False) -> ModelInfo:
    """What model.json says about one model folder (or why it cannot be read)."""
    size = folder_size(folder)
    try:
        config = read_config(folder)
    except (ModelFolderError, OSError) as exc:  # OSError: model.json unreadable, or deleted meanwhile
        return ModelInfo(name, folder, size_bytes=size, bundled=bundled, error=str(exc))
    return ModelInfo(
        name=name,
        path=folder,
        family=config.family,
        native_size=config.default_size,
        precision=config.dtype,
        prediction_type=config.prediction_type,
        in_channels=config.unet.in_channels,
        source=config.source.name,
        size_bytes=size,
        bundled=bundled,
    )


def check_name(name: str) -> str:
    """A folder name a user may give a model, stripped; raises ModelLibraryError saying what is wrong."""
    stripped = name.strip()
    if not stripped:
        raise ModelLibraryError("a model name cannot be empty")
    if len(stripped) > MAX_NAME_LENGTH:
        raise ModelLibraryError(f"a model name has at most {MAX_NAME_LENGTH} characters, got {len(stripped)}")
    bad = sorted({c for c in stripped if c in '/\\:' or ord(c) < 32})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise ModelLibraryError(f"a model name cannot contain {shown}: {stripped!r}")
    if stripped.startswith("."):
        raise ModelLibraryError(f"a model name cannot start with '.': {stripped!r}")
    if stripped.casefold() == DEMO_NAME:
        raise ModelLibraryError(f"{DEMO_NAME!r} is the bundled demo model's name; choose another")
    return stripped


def name_from_source(source: str) -> str:
    """A model name for an import: the checkpoint's file stem, or the name part of a repo id."""
    stem = checkpoint_stem(source)
    cleaned = "".join(c if c != ":" and ord(c) >= 32 else "-" for c in stem).strip().lstrip(".")
    return cleaned[:MAX_NAME_LENGTH] or "model"


class ModelLibrary:
    """The models of one library folder. Cheap to create; every call reads the disk afresh."""

    def __init__(self, library: str | os.PathLike[str], demo_folder: Path | None = DEMO_FOLDER):
        self.library = Path(library)
        self.folder = self.library / MODELS_DIR
        self.demo_folder = demo_folder
        self._finish_deletes()
        self._seal_models()

    @property
    def demo_available(self) -> bool:
        return self.demo_folder is not None and demo_available(self.demo_folder)

    def models(self) -> list[ModelInfo]:
        """The converted models by name (case-insensitive), then the demo model if it is bundled."""
        found: list[ModelInfo] = []
        if self.folder.is_dir():
            for path in sorted(self.folder.iterdir(), key=lambda p: p.name.casefold()):
                if path.is_dir() and not path.name.startswith("."):
                    found.append(describe(path, path.name))
        if self.demo_available:
            assert self.demo_folder is not None
            found.append(describe(self.demo_folder, DEMO_NAME, bundled=True))
        return found

    def converted_models(self) -> list[ModelInfo]:
        """The user's own usable models (the demo model and damaged folders left out)."""
        return [m for m in self.models() if m.usable and not m.bundled]

    def get(self, name: str) -> ModelInfo | None:
        path = self.path_of(name)
        if path is None or not path.is_dir():
            return None
        return describe(path, DEMO_NAME if name == DEMO_NAME else path.name, bundled=name == DEMO_NAME)

    def path_of(self, name: str) -> Path | None:
        """The folder of the model called `name` (DEMO_NAME is the bundled one), or None."""
        if name == DEMO_NAME:
            return self.demo_folder if self.demo_available else None
        if not name or name.startswith(".") or Path(name).name != name:
            return None
        return self.folder / name

    def import_target(self, source: str) -> tuple[str, Path]:
        """A free model name and folder for importing `source` ("name", "name-2", ...)."""
        base = name_from_source(source)
        if base.casefold() == DEMO_NAME:
            base = f"{base}-model"
        taken = self._taken_names()
        name, n = base, 2
        while name.casefold() in taken:
            name, n = f"{base}-{n}", n + 1
        return name, self.folder / name

    def rename(self, name: str, new_name: str) -> ModelInfo:
        old = self._own_folder(name)
        new_name = check_name(new_name)
        if new_name == name:
            return describe(old, name)
        if new_name.casefold() in self._taken_names() - {name.casefold()}:
            raise ModelLibraryError(f"there is already a model called {new_name!r}")
        target = self.folder / new_name
        try:
            os.rename(old, target)
        except OSError as exc:
            raise ModelLibraryError(f"could not rename {name!r} to {new_name!r}: {exc}") from exc
        return describe(target, new_name)

    def delete(self, name: str) -> None:
        """Delete a converted model. It is renamed to a hidden folder first, so it vanishes at once and
        a crash midway never leaves half a model listed."""
        folder = self._own_folder(name)
        doomed = self.folder / f"{DELETING_PREFIX}{uuid.uuid4().hex}"
        try:
            os.rename(folder, doomed)
        except OSError as exc:
            raise ModelLibraryError(f"could not delete {name!r}: {exc}") from exc
        shutil.rmtree(doomed, ignore_errors=True)

    def _own_folder(self, name: str) -> Path:
        if name == DEMO_NAME:
            raise ModelLibraryError("the bundled demo model cannot be renamed or deleted")
        path = self.path_of(name)
        if path is None or not path.is_dir():
            raise ModelLibraryError(f"there is no model called {name!r} in {self.folder}")
        return path

    def _taken_names(self) -> set[str]:
        if not self.folder.is_dir():
            return set()
        # hidden staging folders count too: `.<name>.partial-*` belongs to a conversion in progress
        names = {p.name.casefold() for p in self.folder.iterdir() if not p.name.startswith(".")}
        staging = {p.name[1:].split(".partial-")[0].casefold() for p in self.folder.glob(".*.partial-*")}
        return names | staging

    def _seal_models(self) -> None:
        """Models converted before model files were written read-only get their write bits taken off, so
        that they load mapped again (mlx_sd.mapped_weights maps read-only files only)."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.is_dir() and not path.name.startswith("."):
                try:
                    make_files_read_only(path)
                except OSError:
                    pass  # a read-only file system or another owner: the model is read instead of mapped

    def _finish_deletes(self) -> None:
        if self.folder.is_dir():
            for leftover in self.folder.glob(f"{DELETING_PREFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)
