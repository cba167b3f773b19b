"""The desktop app's entry point: `mlx-sd-app` (a gui-script) and `python -m app`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlx_sd  # first: binds OpenBLAS before anything loads mlx.core (mlx_sd.cpu.blas)


from PySide6.QtCore import QStandardPaths
from PySide6.QtWidgets import QApplication

from . import desktop_entry
from .animation_panel import install_animation_panel
from .blend_panel import install_blend_panel
from .history_browser import install_history_browser
from .kernel_warmup import KernelWarmup, kernels_needed
from .library_folder import default_library_folder
from .linux_libraries import xcb_problem
from .lora_panel import install_lora_panel
from .vae_choice import install_vae_choice
from .main_window import MainWindow
from .model_manager import install_model_manager
from .outpaint_controls import install_outpaint_controls
from .settings import AppSettings, library_path, load_settings
from .settings_dialog import install_settings_dialog
from .vary_control import install_vary_control

APP_NAME = "mlx-sd"
SETTINGS_FILE = "settings.json"
SESSION_FILE = "session.json"  # the window as it was closed (app.session_state)


def settings_file() -> Path:
    """Where the settings live: the platform's config folder (call after the QApplication exists)."""
    folder = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppConfigLocation)
    return Path(folder) / SETTINGS_FILE


def default_library() -> Path:
    """The library folder when the user has not chosen one: the platform's app data folder."""
    return default_library_folder(APP_NAME)


def build_window(settings: AppSettings, settings_path: Path | None) -> MainWindow:
    """The main window with everything plugged in."""
    session = settings_path.with_name(SESSION_FILE) if settings_path is not None else None
    window = MainWindow(
        settings, library_path(settings.library_folder, default_library()), settings_path, session_path=session,
    )
    history = install_history_browser(window)
    models = install_model_manager(window)
    install_animation_panel(window, install_blend_panel(window))
    loras = install_lora_panel(window)
    vaes = install_vae_choice(window)
    install_vary_control(window)
    install_outpaint_controls(window)
    install_settings_dialog(
        window, settings_path, default_library(),
        releasers=[history.release, models.importer.shutdown], listeners=[history.set_library, loras.set_library, vaes.set_library],
    )
    window.restore_session()
    if kernels_needed(settings.compute_device):
        window.prepare_cpu_kernels(KernelWarmup(parent=window))
    return window


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="mlx-sd-app", description="Stable Diffusion on your Mac, with MLX.")
    parser.add_argument("--install-desktop-entry", action="store_true",
                        help="Linux: add mlx-sd with its icon to the desktop's application menu, then exit")
    return parser.parse_known_args(argv)  # the rest goes to Qt (-platform, -style, ...)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    args, qt_args = parse_args(argv[1:])
    mlx_sd.setup()  # before the generation thread allocates
    if args.install_desktop_entry:
        return desktop_entry.main()
    problem = xcb_problem(qt_args)
    if problem is not None:  # said in words, instead of Qt's abort
        print(problem, file=sys.stderr)
        return 1
    app = QApplication([argv[0] if argv else APP_NAME, *qt_args])
    app.setWindowIcon(desktop_entry.app_icon())
    app.setApplicationName(APP_NAME)  # no organisation name: folders are .../mlx-sd, not .../mlx-sd/mlx-sd
    app.setApplicationDisplayName(APP_NAME)
    path = settings_file()
    window = build_window(load_settings(path), path)
    window.show()
    return app.exec()
