"""What the window looked like when it closed (prompts, parameters, geometry, panel sizes), restored on
the next start. Kept apart from the settings: it changes on every close and is never edited by hand.

Qt-free: geometry and panel sizes are Qt's own saved-state bytes, stored as base64 text."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from .settings import read_json_object, typed_values, write_json


@dataclass
class SessionState:
    prompt: str = ""
    negative_prompt: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # GenerationRequest field names
    preset: str = ""  # the preset shown when the window closed ("" = Custom)
    advanced_open: bool = False
    geometry: str = ""  # QMainWindow.saveGeometry, base64
    splitters: dict[str, str] = field(default_factory=dict)  # a named QSplitter's saveState, base64


def load_session(path: str | os.PathLike[str]) -> SessionState:
    """The saved state; a fresh one for a missing or unreadable file, a default for each bad value."""
    return SessionState(**typed_values(SessionState, read_json_object(path)))


def save_session(state: SessionState, path: str | os.PathLike[str]) -> None:
    write_json(dataclasses.asdict(state), path)
