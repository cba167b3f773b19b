"""The one error type of LoRA and embedding files: its message is a single line for the user."""

from __future__ import annotations


class LoraError(ValueError):
    """A LoRA or embedding that cannot be used: unreadable, of another family, or matching no layer."""
