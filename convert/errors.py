"""The converter's exceptions: one-line messages that say what was expected, what was found and
what to do. Both derive from ValueError so `mlx-sd` prints them without a traceback."""

from __future__ import annotations


class ConversionError(ValueError):
    """The source cannot be converted as given."""


class ConversionCancelled(ConversionError):
    """The caller asked to stop; nothing was left behind."""

    def __init__(self) -> None:
        super().__init__("conversion cancelled; no output was written")
