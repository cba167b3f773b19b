"""Where the library lives when the user has not chosen a folder, without Qt: the same folder as
Qt's `QStandardPaths.AppDataLocation` for an application called "mlx-sd", so that the app and
`mlx-sd serve` (which must not load Qt) find the same models and history."""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "mlx-sd"


def default_library_folder(app_name: str = APP_NAME) -> Path:
    """~/Library/Application Support/<app> on macOS, %APPDATA%\\<app> on Windows, and
    $XDG_DATA_HOME/<app> (by default ~/.local/share/<app>) elsewhere."""
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / app_name
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming") / app_name
    data_home = os.environ.get("XDG_DATA_HOME", "")
    base = Path(data_home) if os.path.isabs(data_home) else home / ".local" / "share"
    return base / app_name
