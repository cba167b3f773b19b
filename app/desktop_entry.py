"""The app's icon files, and on Linux a desktop launcher: `mlx-sd-app --install-desktop-entry`.

Writes, under $XDG_DATA_HOME (default ~/.local/share):

    applications/mlx-sd.desktop                     the launcher menus and docks show
    icons/hicolor/<N>x<N>/apps/mlx-sd.png           the icon at every size the icon theme spec lists

The launcher starts the `mlx-sd-app` found next to this Python (or `python -m app`), so it keeps working
from a virtual environment that is not activated.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlx_sd.resources import resource

if TYPE_CHECKING:
    from PySide6.QtGui import QIcon

APP_ID = "mlx-sd"
ICON_DIR = resource("icon")
ICON_SIZES = (16, 32, 64, 128, 256, 512)  # hicolor sizes we ship (1024 is for the macOS bundle)
GUI_SCRIPT = "mlx-sd-app"


def icon_file(size: int) -> Path:
    return ICON_DIR / f"{APP_ID}-{size}.png"


def app_icon() -> "QIcon":
    """The window icon, with every rendered size (Qt is imported here, so the launcher code stays
    usable without a display)."""
    from PySide6.QtGui import QIcon

    icon = QIcon()
    for size in (*ICON_SIZES, 1024):
        if icon_file(size).is_file():
            icon.addFile(str(icon_file(size)))
    return icon


def data_home(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """$XDG_DATA_HOME when set to an absolute path (the spec says to ignore a relative one)."""
    value = environ.get("XDG_DATA_HOME", "")
    return Path(value) if value and os.path.isabs(value) else Path.home() / ".local" / "share"


def launcher_command() -> list[str]:
    """How the launcher starts the app: the gui-script beside this interpreter, else `python -m app`."""
    beside = Path(sys.executable).parent / GUI_SCRIPT
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which(GUI_SCRIPT)
    return [found] if found else [sys.executable, "-m", "app"]


def quote_exec_argument(argument: str) -> str:
    """One argument of the Exec key, quoted as the Desktop Entry spec asks.

    Inside double quotes `"`, `` ` ``, `$` and `\\` are backslash-escaped; then, as for every string
    value, each backslash is doubled in the file; `%` is written `%%` (field codes)."""
    reserved = set(' \t\n"\'\\><~|&;$*?#()`')
    if argument and not reserved & set(argument):
        quoted = argument
    else:
        escaped = "".join("\\" + c if c in '"`$\\' else c for c in argument)
        quoted = f'"{escaped}"'
    return quoted.replace("\\", "\\\\").replace("%", "%%")


def desktop_entry_text(command: list[str], icon: Path) -> str:
    exec_line = " ".join(quote_exec_argument(a) for a in command)
    return "\n".join([
        "[Desktop Entry]",
        "Type=Application",
        "Version=1.4",
        "Name=mlx-sd",
        "GenericName=Image Generator",
        "Comment=Make images from text with Stable Diffusion, on your own computer",
        f"Exec={exec_line}",
        f"Icon={icon}",
        "Terminal=false",
        "Categories=Graphics;2DGraphics;RasterGraphics;",
        "Keywords=stable diffusion;ai;image;generate;",
        "StartupNotify=true",
        f"StartupWMClass={APP_ID}",
        "",
    ])


@dataclass(frozen=True)
class InstalledEntry:
    desktop_file: Path
    icons: list[Path]


def install_desktop_entry(data: Path | None = None, command: list[str] | None = None) -> InstalledEntry:
    """Install the icons and the launcher under `data` (default: data_home()); returns what was written."""
    data = data or data_home()
    missing = [icon_file(s) for s in ICON_SIZES if not icon_file(s).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the app icon is missing ({missing[0]}); render it with `python resources/icon/render_icon.py`"
        )
    icons = []
    for size in ICON_SIZES:
        target = data / "icons" / "hicolor" / f"{size}x{size}" / "apps" / f"{APP_ID}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(icon_file(size), target)
        icons.append(target)
    # an absolute icon path works at once; a theme name would wait for the icon cache to refresh
    text = desktop_entry_text(command or launcher_command(), icons[ICON_SIZES.index(256)])
    desktop = data / "applications" / f"{APP_ID}.desktop"
    desktop.parent.mkdir(parents=True, exist_ok=True)
    temp = desktop.with_name(f".{desktop.name}.partial")
    temp.write_text(text, encoding="utf-8")
    temp.chmod(0o755)  # some desktops only start launchers marked executable
    os.replace(temp, desktop)
    return InstalledEntry(desktop, icons)


def main(platform: str = sys.platform) -> int:
    """`mlx-sd-app --install-desktop-entry`: install, say where, return an exit status."""
    if not platform.startswith("linux"):
        print(
            "mlx-sd-app: --install-desktop-entry is for Linux desktops; on macOS build an app bundle "
            "with scripts/build_macos_app.sh",
            file=sys.stderr,
        )
        return 2
    try:
        installed = install_desktop_entry()
    except OSError as exc:
        print(f"mlx-sd-app: could not install the desktop entry: {exc}", file=sys.stderr)
        return 1
    print(f"installed {installed.desktop_file}")
    print(f"installed the icon in {len(installed.icons)} sizes under {installed.icons[0].parents[3]}")
    return 0
