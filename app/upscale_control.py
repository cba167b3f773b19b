"""Upscaling a result with one of the library's upscaler models (ESRGAN, Real-ESRGAN), for the result
view's Upscale control: read the model (convert.upscaler_file) and run it tile by tile
(mlx_sd.upscalers.upscale_image), on the generation thread (`GenerationController.call`), so a model
never runs beside a generation; progress per tile, cancelled between two tiles."""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path
from typing import Callable

from PIL import Image
from PySide6.QtCore import QObject, Signal, Slot

# queues work(worker) on the generation thread and returns its future (GenerationController.call)
Caller = Callable[[Callable[[object], Image.Image]], concurrent.futures.Future]


class UpscaleCancelled(Exception):
    """Raised from the progress callback to stop a model between two tiles."""


def run_upscale(image: Image.Image, factor: float, model: Path, tile: int,
                progress: Callable[[int, int], None]) -> Image.Image:
    """`image` upscaled `factor` times with the upscaler model file `model` (a ValueError in one line
    when the file is not one); `progress(done, total)` after each tile may raise to stop."""
    from convert.upscaler_file import read_upscaler
    from mlx_sd.upscalers import upscale_image

    network, _ = read_upscaler(model)
    return upscale_image(image, factor, network, tile=tile, progress=progress)


class ModelUpscaler(QObject):
    """One model upscale at a time; its signals arrive on the UI thread."""

    progressed = Signal(int, int)  # tiles done, tiles in all
    finished = Signal(object, object)  # the key given to start, the upscaled PIL image
    failed = Signal(object, str)  # the key, what went wrong in one line
    cancelled = Signal(object)  # the key
    _ended = Signal(object, object)  # key, future: from the generation thread to this one

    def __init__(self, call: Caller, parent: QObject | None = None):
        super().__init__(parent)
        self._call = call
        self._stop = threading.Event()
        self.key: object = None  # the running upscale's key, None when idle
        self._ended.connect(self._on_ended)

    @property
    def busy(self) -> bool:
        return self.key is not None

    def start(self, key: object, image: Image.Image, factor: float, model: Path, tile: int) -> None:
        """Upscale on the generation thread; a running upscale is cancelled first."""
        self.cancel()
        stop = self._stop = threading.Event()
        self.key = key

        def progress(done: int, total: int) -> None:
            if stop.is_set():
                raise UpscaleCancelled
            self.progressed.emit(done, total)

        future = self._call(lambda _worker: run_upscale(image, factor, model, tile, progress))
        future.add_done_callback(lambda f: self._ended.emit(key, f))

    def cancel(self) -> None:
        self._stop.set()
        self.key = None

    @Slot(object, object)
    def _on_ended(self, key: object, future: concurrent.futures.Future) -> None:
        if key is self.key:
            self.key = None
        try:
            image = future.result()
        except (UpscaleCancelled, concurrent.futures.CancelledError):
            self.cancelled.emit(key)
        except MemoryError:
            self.failed.emit(key, "There is not enough memory for this upscale; choose a smaller tile size in Settings.")
        except ValueError as exc:  # the converter's and the upscaler's errors say what to do
            self.failed.emit(key, str(exc))
        except Exception as exc:  # a bug must not take the window down
            self.failed.emit(key, f"The upscale failed unexpectedly: {type(exc).__name__}: {exc}")
        else:
            self.finished.emit(key, image)
