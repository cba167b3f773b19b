"""The files bundled with mlx-sd (CLIP vocabulary, demo model, app icon), found in one place.

In a source checkout or an editable install they are the repository's `resources/` folder; a wheel
installs them as data files under `<prefix>/share/mlx-sd/resources` (pyproject's data-files table).
"""

from __future__ import annotations

import sys
from pathlib import Path

_CANDIDATES = (
    Path(__file__).resolve().parents[1] / "resources",
    Path(sys.prefix) / "share" / "mlx-sd" / "resources",
)


def resources_root() -> Path:
    for candidate in _CANDIDATES:
        if (candidate / "clip_tokenizer").is_dir():
            return candidate
    return _CANDIDATES[0]  # a broken install: callers report the missing file by its expected path


def resource(*parts: str) -> Path:
    """Path of a bundled file or folder, e.g. resource("demo") or resource("icon", "mlx-sd-64.png")."""
    return resources_root().joinpath(*parts)
