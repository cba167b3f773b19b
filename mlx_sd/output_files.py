"""Numbered output files that never overwrite anything: `00001-<seed>.png`, counting up.

As A1111 names its outputs, the number is one more than the highest number already in the folder.
Taking a name is atomic: the file is created with O_CREAT | O_EXCL, so two processes (or two threads)
saving into the same folder at once each get their own name and neither overwrites the other. The
image is then written beside it and renamed onto the taken name, so a reader never sees a half-written
image there, and an interrupted save removes both files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from PIL import Image

from .image_metadata import save_image

NUMBER_DIGITS = 5
_NUMBERED = re.compile(r"^(\d+)-")


class OutputFolderError(ValueError):
    """An output folder that cannot be written or created."""


def check_output_folder(folder: str | os.PathLike[str]) -> None:
    """Raise OutputFolderError unless images can be saved in `folder`: an existing folder this user may
    write in, or a path whose nearest existing parent is one (the folder is created at the first save).
    Called before any work, so a wrong `--output` fails before the model loads, not after an image."""
    folder = Path(folder)
    absolute = folder.absolute()
    existing = next(p for p in (absolute, *absolute.parents) if p.exists())  # the root always exists
    if not existing.is_dir():
        what = "is a file" if existing == absolute else f"cannot be created: {existing} is a file"
        raise OutputFolderError(f"the output folder {folder} {what}; expected a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "" if existing == absolute else f"cannot be created: {existing} "
        raise OutputFolderError(f"the output folder {folder} {what}is not writable by this user")


def next_number(folder: str | os.PathLike[str]) -> int:
    """One more than the highest `NNNNN-` prefix of a file in `folder` (1 for an empty folder)."""
    highest = 0
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 1
    for name in names:
        match = _NUMBERED.match(name)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def take_name(path: Path) -> bool:
    """Create `path` as an empty file unless it exists; True when this call created it. Atomic
    (O_CREAT | O_EXCL): of two processes taking the same name at once, exactly one gets it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        return False
    return True


def reserve_path(folder: str | os.PathLike[str], seed: int, suffix: str = ".png") -> Path:
    """Create an empty file `<number>-<seed><suffix>` under a number nobody holds, and return its path.

    The folder is created if needed. The caller owns the file and must fill it or delete it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    number = next_number(folder)
    while True:
        path = folder / f"{number:0{NUMBER_DIGITS}d}-{seed}{suffix}"
        if take_name(path):
            return path
        number += 1  # taken since we listed the folder, or a name with another seed: try the next


def save_numbered(
    image: Image.Image, folder: str | os.PathLike[str], seed: int, infotext: str | None, suffix: str = ".png"
) -> Path:
    """Save `image` with its infotext under the next free numbered name; returns the path.

    If anything interrupts the save (an error, Ctrl-C), no file of it is left behind."""
    path = reserve_path(folder, seed, suffix)
    try:
        save_image(image, path, infotext, durable=True)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
