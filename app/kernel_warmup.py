"""The first start on a machine without a GPU: the engine compiles its CPU kernels (about 40 s, once per
mlx version and CPU). The window starts that in the background at once and says so, instead of the
first Generate sitting on "Loading…" while the compiler runs."""

from __future__ import annotations

import threading
from typing import Callable

from PySide6.QtCore import QObject, Signal

from mlx_sd import cpu_kernels, device


def kernels_needed(compute_device: str) -> bool:
    """Whether generation will run on the CPU (no GPU, or the CPU chosen in Settings)."""
    return compute_device == "cpu" or not device.gpu_available()


def prepare_cpu_kernels() -> str:
    """Build (first time) or load the engine's CPU kernels; what came of it, in a few words. The app's
    only call into the kernels: if they move, this follows."""
    status = cpu_kernels.status()
    return "ready" if status.module is not None else f"not used ({status.reason})"


class KernelWarmup(QObject):
    """Runs `prepare` on a daemon thread (a compile in progress must not keep the app from quitting)
    and reports its outcome on the UI thread."""

    finished = Signal(str)  # the outcome line

    def __init__(self, prepare: Callable[[], str] = prepare_cpu_kernels, parent: QObject | None = None):
        super().__init__(parent)
        self._prepare = prepare

    def start(self) -> None:
        threading.Thread(target=lambda: self.finished.emit(self._prepare()), name="cpu-kernels", daemon=True).start()
