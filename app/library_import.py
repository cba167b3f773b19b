"""Files that belong in the library beside the models: LoRAs, embeddings, VAEs and upscaler models,
recognised from their tensor names and shapes (never from their file names) and copied into the
library's `loras/`, `embeddings/`, `vae/` or `upscalers/` folder. Qt-free; the app runs it on a worker.

A copy is written to a hidden temporary file in the target folder, then given its name in one step, so a
crash or a full disk never leaves half a LoRA listed. A name that is taken gets ` (2)`, ` (3)`, ...; the
same bytes under the same name are not copied twice.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from convert.detect import weights_kind
from convert.errors import ConversionError
from convert.upscaler_file import detect_upscaler
from mlx_sd.library import KINDS
from mlx_sd.pickle_files import is_pickle
from mlx_sd.safetensors_header import HeaderError, read_header

from .settings import PICKLES_OFF

RESOURCE_KINDS = tuple(kind for kind in KINDS if kind != "models")  # library folders of single files
# Pickles are unpickled (weights only) to see their keys: LoRAs, embeddings, VAEs and upscalers are all
# smaller than this, and a multi-gigabyte checkpoint is not read just to refuse it.
PICKLE_READ_LIMIT = 1 << 30

Shapes = dict[str, tuple[int, ...]]


class LibraryImportError(ValueError):
    """A file that cannot be read or copied; the message is one line for the user."""


class PicklesNotAllowed(LibraryImportError):
    """A small pickle while Settings > Allow pickle files is off: it is not unpickled to see what it is."""

    def __init__(self, path: Path):
        super().__init__(PICKLES_OFF.format(name=path.name))


def kind_of_shapes(shapes: Shapes, name: str) -> str:
    """"models", one of RESOURCE_KINDS, or "" for tensors of something else."""
    kind = weights_kind(set(shapes))
    if kind or not shapes:
        return kind
    try:
        detect_upscaler(shapes, name)
    except ConversionError:
        return ""
    return "upscalers"


def _pickle_shapes(path: Path) -> Iterator[Shapes]:
    """The tensor shapes of a weights-only torch file, as the converter unwraps it (an upscaler's
    `params_ema`), then (read again only when asked) flattened as the LoRA reader reads it (an
    embedding's `string_to_param`)."""
    from convert.pickle_file import PickleCheckpoint
    from mlx_sd.lora.errors import LoraError
    from mlx_sd.lora.files import read_tensors

    try:
        yield {k: tuple(v.shape) for k, v in PickleCheckpoint(path).tensors.items()}
        yield {k: tuple(v.shape) for k, v in read_tensors(path, allow_pickle=True).tensors.items()}  # allowed by the caller
    except (ConversionError, LoraError) as exc:
        raise LibraryImportError(str(exc)) from None


def classify_weights(path: Path, allow_pickle: bool = False) -> str:
    """What the weights file at `path` is: "models", one of RESOURCE_KINDS, or "" when unknown.
    A large pickle counts as a model (it is never unpickled just to find out); a small one is unpickled
    (weights only) with `allow_pickle`, else PicklesNotAllowed. LibraryImportError when the file cannot
    be read."""
    try:
        if is_pickle(path):
            if path.stat().st_size > PICKLE_READ_LIMIT:
                return "models"
            if not allow_pickle:
                raise PicklesNotAllowed(path)
            candidates: Iterable[Shapes] = _pickle_shapes(path)
        else:
            candidates = [{k: tuple(v.shape) for k, v in read_header(path).tensors.items()}]
        for shapes in candidates:
            kind = kind_of_shapes(shapes, path.name)
            if kind:
                return kind
    except HeaderError as exc:
        raise LibraryImportError(str(exc)) from None
    except OSError as exc:
        raise LibraryImportError(f"{path.name} cannot be read: {exc.strerror or exc}") from None
    return ""


def _free_name(folder: Path, stem: str, suffix: str, number: int) -> Path:
    return folder / (f"{stem}{suffix}" if number == 1 else f"{stem} ({number}){suffix}")


def _claim(temp: Path, target: Path) -> bool:
    """Give `temp` the name `target` unless that is taken (a hard link fails on a taken name, so two
    copies at once never overwrite each other); False when taken."""
    try:
        os.link(temp, target)
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links (FAT, some network shares)
        if target.exists():
            return False
        os.replace(temp, target)
        return True
    temp.unlink()
    return True


def copy_into_library(source: Path, folder: Path) -> tuple[Path, bool]:
    """Copy `source` into `folder` (created when missing) under its own name, or `name (2)` ... when that
    is taken by other bytes; returns (the library's file, whether it was copied: False when the same file
    was there already). LibraryImportError in one line when it cannot."""
    stem, suffix = source.stem, source.suffix
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(1, 10_000):
            existing = _free_name(folder, stem, suffix, number)
            if not existing.exists():
                break
            if filecmp.cmp(source, existing, shallow=False):
                return existing, False
        temp = folder / f".{source.name}.partial-{uuid.uuid4().hex}"
        try:
            shutil.copyfile(source, temp)
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())  # the bytes are on disk before the name appears
            for number in range(1, 10_000):
                target = _free_name(folder, stem, suffix, number)
                if _claim(temp, target):
                    return target, True
        finally:
            temp.unlink(missing_ok=True)
    except OSError as exc:
        raise LibraryImportError(f"{source.name} could not be copied into {folder}: {exc.strerror or exc}") from None
    raise LibraryImportError(f"{source.name}: no free name for it in {folder}")
