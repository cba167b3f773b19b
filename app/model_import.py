"""Importing checkpoints into the model library on a worker thread, behind a progress dialog; and
copying LoRAs, embeddings, VAEs and upscaler models into the library on a worker (`ResourceImporter`).

`ModelImporter` runs the converter (`convert.convert_model`) in a `ConversionWorker` on its own thread;
the dialog's Cancel stops the conversion between two tensors, and the converter leaves nothing behind
when cancelled or failing. The model manager dialog and the main window (dropped checkpoints) share one
importer (app.model_manager).
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QCoreApplication, QObject, QRunnable, Qt, QThread, QThreadPool, Signal, Slot
from PySide6.QtWidgets import QProgressBar, QProgressDialog, QWidget

from convert import ConversionCancelled, ConversionProgress, ConversionReport, ConvertOptions, convert_model

from mlx_sd.model_library import ModelLibrary

from .hub_download import download_repo
from .library_import import LibraryImportError, copy_into_library

Converter = Callable[..., ConversionReport]  # convert_model's signature


def progress_label(progress: ConversionProgress, source: str) -> str:
    """What the progress dialog says at each stage of a conversion."""
    match progress.stage:
        case "fetch":
            return f"Downloading {source} from Hugging Face\u2026"
        case "download":
            return f"Downloading {source}: {progress.done:,} of {progress.total:,} MB"
        case "read":
            return f"Converting weights: {progress.done} of {progress.total}"
        case "write":
            return "Writing the model into the library\u2026"
        case "validate":
            return "Checking that the model loads\u2026"
    return "Finishing\u2026"


def hub_converter(downloads: Path, convert: Converter = convert_model) -> Converter:
    """A converter for a Hugging Face repo id that downloads it itself, in chunks (so Cancel stops the
    download), into `downloads`/<model name>, converts that folder, then deletes it."""

    def download_and_convert(
        source: str, output: Path, options: ConvertOptions,
        on_progress: Callable[[ConversionProgress], None], cancel: Callable[[], bool],
    ) -> ConversionReport:
        folder = downloads / output.name
        shutil.rmtree(folder, ignore_errors=True)  # what a crash mid-download left
        variant = download_repo(source, folder, options.variant, options.revision or "main", on_progress, cancel)
        try:
            return convert(folder, output, dataclasses.replace(options, variant=variant), on_progress, cancel)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return download_and_convert


class ConversionWorker(QObject):
    """Runs one conversion in its thread; `abort` may be called from any thread."""

    progressed = Signal(object)  # convert.ConversionProgress
    succeeded = Signal(object)  # convert.ConversionReport
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, source: str, output: Path, options: ConvertOptions, convert: Converter = convert_model):
        super().__init__()
        self._source = source
        self._output = output
        self._options = options
        self._convert = convert
        self._abort = threading.Event()

    def abort(self) -> None:
        self._abort.set()

    @Slot()
    def run(self) -> None:
        try:
            report = self._convert(self._source, self._output, self._options, self.progressed.emit, self._abort.is_set)
        except ConversionCancelled:
            self.cancelled.emit()
        except MemoryError:
            self.failed.emit("There is not enough memory to convert this model; close other apps and try again.")
        except (ValueError, OSError) as exc:  # ConversionError is a ValueError: it says what to do
            self.failed.emit(str(exc))
        except Exception as exc:  # a converter bug must not take the app down
            self.failed.emit(f"The converter failed unexpectedly: {type(exc).__name__}: {exc}")
        else:
            self.succeeded.emit(report)


class ModelImporter(QObject):
    """Converts checkpoints into the library one at a time, showing a cancellable progress dialog."""

    progressed = Signal(object)  # convert.ConversionProgress, after the progress dialog has shown it
    imported = Signal(str)  # the new model's name
    failed = Signal(str)  # what went wrong, in words
    cancelled = Signal()

    def __init__(self, parent_widget: QWidget | None = None, convert: Converter = convert_model):
        super().__init__(parent_widget)
        self._parent_widget = parent_widget
        self._convert = convert
        self._thread: QThread | None = None
        self._worker: ConversionWorker | None = None
        self._name = ""
        self._source = ""
        self.progress_dialog: QProgressDialog | None = None
        self._bar: QProgressBar | None = None
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def start(
        self, source: str | Path, library: ModelLibrary, options: ConvertOptions, convert: Converter | None = None
    ) -> bool:
        """Begin importing `source` (a checkpoint file or a repo id) with `convert` (the importer's
        converter by default, e.g. `hub_converter` for a catalogue download); False if one is running."""
        if self.busy:
            self.failed.emit(f"{self._name} is still being imported; wait for it or cancel it first.")
            return False
        try:
            name, output = library.import_target(str(source))
        except OSError as exc:
            self.failed.emit(f"The library's models folder cannot be read: {exc}")
            return False
        self._source, self._name = str(source), name
        self._thread = QThread()
        self._thread.setObjectName("model-import")
        self._worker = ConversionWorker(self._source, output, options, convert or self._convert)
        self._worker.moveToThread(self._thread)
        self._thread.started.connect(self._worker.run)
        self._worker.progressed.connect(self._on_progress)
        self._worker.succeeded.connect(self._on_succeeded)
        self._worker.failed.connect(self._on_failed)
        self._worker.cancelled.connect(self._on_cancelled)
        self._show_progress()
        self._thread.start()
        return True

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.abort()
            if self.progress_dialog is not None:
                self.progress_dialog.setLabelText("Cancelling\u2026")

    @Slot()
    def shutdown(self) -> None:
        """Cancel a running import and wait for its thread (on quit)."""
        if self._worker is not None and self._thread is not None:
            self._worker.abort()
            self._thread.quit()
            self._thread.wait()
            self._end()

    def _show_progress(self) -> None:
        dialog = QProgressDialog(f"Preparing to import {self._name}\u2026", "Cancel", 0, 0, self._parent_widget)
        dialog.setWindowTitle(f"Importing {self._name}")
        dialog.setWindowModality(Qt.WindowModality.WindowModal)
        dialog.setMinimumDuration(0)
        dialog.setAutoClose(False)
        dialog.setAutoReset(False)
        dialog.setMinimumWidth(420)
        # Our own bar, set directly: QProgressDialog.setValue runs the event loop when modal, which
        # would deliver the next queued progress (or the result) inside this one.
        self._bar = QProgressBar()
        self._bar.setRange(0, 0)
        dialog.setBar(self._bar)
        dialog.canceled.connect(self.cancel)
        dialog.show()
        self.progress_dialog = dialog

    @Slot(object)
    def _on_progress(self, progress: ConversionProgress) -> None:
        dialog, bar = self.progress_dialog, self._bar
        if dialog is None or bar is None or dialog.wasCanceled():
            return
        dialog.setLabelText(progress_label(progress, self._source))
        if progress.stage in ("read", "download") and progress.total > 0:
            bar.setRange(0, progress.total)
            bar.setValue(progress.done)
        else:
            bar.setRange(0, 0)  # a busy indicator: these stages have no count
        self.progressed.emit(progress)

    @Slot(object)
    def _on_succeeded(self, report: ConversionReport) -> None:
        name = self._name
        self._end()
        self.imported.emit(name)

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self._end()
        self.failed.emit(message)

    @Slot()
    def _on_cancelled(self) -> None:
        self._end()
        self.cancelled.emit()

    def _end(self) -> None:
        if self._thread is not None:
            self._thread.quit()
            self._thread.wait()
            self._thread.deleteLater()
        if self._worker is not None:
            self._worker.deleteLater()
        if self.progress_dialog is not None:
            self.progress_dialog.canceled.disconnect(self.cancel)
            self.progress_dialog.hide()
            self.progress_dialog.deleteLater()
        self._thread = self._worker = self.progress_dialog = self._bar = None


class _CopySignals(QObject):
    done = Signal(str, object, bool)  # kind, the library's file, whether it was copied
    failed = Signal(str)


class _CopyJob(QRunnable):
    def __init__(self, source: Path, kind: str, folder: Path, signals: _CopySignals):
        super().__init__()
        self.source, self.kind, self.folder, self.signals = source, kind, folder, signals

    def run(self) -> None:
        try:
            target, copied = copy_into_library(self.source, self.folder)
        except LibraryImportError as exc:
            self.signals.failed.emit(str(exc))
        else:
            self.signals.done.emit(self.kind, target, copied)


class ResourceImporter(QObject):
    """Copies LoRAs, embeddings, VAEs and upscaler models into their library folders on a worker thread,
    one at a time, so a large file never freezes the window."""

    copied = Signal(str, object, bool)  # library kind, the file in the library, False when it was there already
    failed = Signal(str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._pending: set[_CopySignals] = set()  # alive until their result is delivered

    def start(self, source: Path, kind: str, folder: Path) -> None:
        signals = _CopySignals()
        signals.done.connect(self._deliver)
        signals.failed.connect(self._fail)
        self._pending.add(signals)
        self._pool.start(_CopyJob(source, kind, folder, signals))

    def wait(self) -> None:
        """Let a running copy finish (on quit: a copy is never left half-done by choice)."""
        self._pool.waitForDone()

    @Slot(str, object, bool)
    def _deliver(self, kind: str, target: Path, copied: bool) -> None:
        self._pending.discard(self.sender())  # type: ignore[arg-type]
        self.copied.emit(kind, target, copied)

    @Slot(str)
    def _fail(self, message: str) -> None:
        self._pending.discard(self.sender())  # type: ignore[arg-type]
        self.failed.emit(message)
