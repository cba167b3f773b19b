"""Qt's X11 platform plugin needs a few system libraries that a plain Linux desktop may lack; without
them Qt aborts with "could not load the Qt platform plugin xcb". Check first and say it in words."""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Callable, Mapping, Sequence

# the shared library Qt's xcb plugin loads -> the Debian/Ubuntu package that provides it
XCB_LIBRARIES = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
}


def uses_xcb(qt_args: Sequence[str], environ: Mapping[str, str], platform: str = sys.platform) -> bool:
    """Whether Qt will open its X11 (xcb) platform: on Linux, unless `-platform` or QT_QPA_PLATFORM
    names another, or a Wayland session lets Qt pick Wayland."""
    if not platform.startswith("linux"):
        return False
    chosen = environ.get("QT_QPA_PLATFORM", "")
    if "-platform" in qt_args[:-1]:
        chosen = qt_args[qt_args.index("-platform") + 1]
    if chosen:
        return chosen.split(":")[0] == "xcb"
    return not environ.get("WAYLAND_DISPLAY")


def _loads(name: str) -> bool:
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def missing_xcb_packages(loads: Callable[[str], bool] | None = None) -> list[str]:
    """The packages whose xcb libraries cannot be loaded, in XCB_LIBRARIES' order."""
    loads = loads or _loads
    return [package for library, package in XCB_LIBRARIES.items() if not loads(library)]


def xcb_problem(
    qt_args: Sequence[str], environ: Mapping[str, str] = os.environ, loads: Callable[[str], bool] | None = None
) -> str | None:
    """A one-line explanation of what to install when Qt's X11 plugin cannot start, else None."""
    if not uses_xcb(qt_args, environ):
        return None
    missing = missing_xcb_packages(loads)
    if not missing:
        return None
    return (
        f"mlx-sd-app cannot open a window: Qt's X11 support needs the system libraries {', '.join(missing)}; "
        f"install them (Debian/Ubuntu: sudo apt install {' '.join(XCB_LIBRARIES.values())}) and start it again."
    )
