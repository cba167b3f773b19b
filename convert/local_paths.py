"""Telling a local path from a Hugging Face repo id, and refusing what is not a readable file.

A path that does not exist must be reported as a missing file, not looked up on the Hub (where a
typo would be sent as a repo name). A FIFO or a device is refused before it is opened: opening a
FIFO blocks until a writer comes.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import ConversionError

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def looks_like_path(text: str) -> bool:
    """Whether `text` can only mean a local path: a repo id is `owner/name`, no more."""
    return (
        text.startswith((".", "~", "/"))
        or "\\" in text
        or text.count("/") > 1
        or text.lower().endswith(CHECKPOINT_SUFFIXES)
        or os.path.islink(text)  # a dangling or looping link is still the user's file
    )


def describe_missing(text: str, exc: OSError) -> ConversionError:
    """The one-line error for a path that cannot be followed to a file or folder."""
    if exc.errno == errno.ELOOP:
        return ConversionError(f"{text}: no such file (a loop of symbolic links)")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return ConversionError(f"{text}: no such file or folder")
    return ConversionError(f"{text}: cannot be read ({exc.strerror})")


def require_regular_file(path: Path) -> None:
    """Raise ConversionError unless `path` is a regular file (checked without opening it)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise describe_missing(str(path), exc) from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO, device or socket"
        raise ConversionError(f"{path} is not a regular file ({kind}); pass a checkpoint file")
