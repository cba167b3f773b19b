"""The model manager: a dialog listing the library's models (family, native size, precision, size on
disk) that imports from a checkpoint file or a Hugging Face repo id, renames and deletes.

Imports run the converter (`convert.convert_model`) on a worker thread behind a progress dialog whose
Cancel stops the conversion between two tensors; the converter leaves nothing behind when cancelled
or failing. `ModelImporter` is shared by the dialog and the main window (dropped checkpoints), and
`install_model_manager` plugs both into the window.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from PySide6.QtCore import QAbstractTableModel, QCoreApplication, QModelIndex, QObject, QPersistentModelIndex, Qt, QThread, QUrl, Signal, Slot
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QProgressDialog,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from convert import ConversionCancelled, ConversionReport, ConvertOptions, Progress, convert_model
from convert.hub import looks_like_repo_id

from .drop_handler import CHECKPOINT_FILTER, CHECKPOINT_SUFFIXES
from .model_library import ModelInfo, ModelLibrary, ModelLibraryError
from .settings import save_settings

if TYPE_CHECKING:
    from .main_window import MainWindow

Converter = Callable[..., ConversionReport]  # convert_model's signature
Index = QModelIndex | QPersistentModelIndex
REPO_EXAMPLE = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def format_size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


def progress_label(progress: Progress, source: str) -> str:
    """What the progress dialog says at each stage of a conversion."""
    match progress.stage:
        case "fetch":
            return f"Downloading {source} from Hugging Face\u2026"
        case "read":
            return f"Converting weights: {progress.done} of {progress.total}"
        case "write":
            return "Writing the model into the library\u2026"
        case "validate":
            return "Checking that the model loads\u2026"
    return "Finishing\u2026"


# -- import on a worker thread ---------------------------------------------------------------


class ConversionWorker(QObject):
    """Runs one conversion in its thread; `abort` may be called from any thread."""

    progressed = Signal(object)  # convert.Progress
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

    progressed = Signal(object)  # convert.Progress, after the progress dialog has shown it
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

    def start(self, source: str | Path, library: ModelLibrary, options: ConvertOptions) -> bool:
        """Begin importing `source` (a checkpoint file or a repo id); False if an import is running."""
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
        self._worker = ConversionWorker(self._source, output, options, self._convert)
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
    def _on_progress(self, progress: Progress) -> None:
        dialog, bar = self.progress_dialog, self._bar
        if dialog is None or bar is None or dialog.wasCanceled():
            return
        dialog.setLabelText(progress_label(progress, self._source))
        if progress.stage == "read" and progress.total > 0:
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


# -- the list of models ----------------------------------------------------------------------


class ModelListModel(QAbstractTableModel):
    """The library's models, one row each, with the columns the manager shows."""

    COLUMNS = ("Name", "Family", "Native size", "Precision", "Size on disk")
    InfoRole = Qt.ItemDataRole.UserRole + 1  # the ModelInfo

    def __init__(self, library: ModelLibrary, parent: QObject | None = None):
        super().__init__(parent)
        self._library = library
        self._models: list[ModelInfo] = library.models()

    def reload(self) -> None:
        models = self._library.models()  # read before the reset: the rows stay valid until it ends
        self.beginResetModel()
        self._models = models
        self.endResetModel()

    def info(self, row: int) -> ModelInfo:
        return self._models[row]

    def row_of(self, name: str) -> int | None:
        return next((row for row, m in enumerate(self._models) if m.name == name), None)

    def rowCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._models)

    def columnCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole and 0 <= section < len(self.COLUMNS):
            return self.COLUMNS[section]
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not self._valid(index):
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemNeverHasChildren

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not self._valid(index):
            return None
        model = self._models[index.row()]
        if role == self.InfoRole:
            return model
        if role == Qt.ItemDataRole.ToolTipRole:
            if model.error:
                return model.error
            return f"{model.path}\nconverted from {model.source or 'unknown'} ({model.prediction_type})"
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        column = index.column()
        if column == 0:
            if model.bundled:
                return "demo (bundled)"
            return f"{model.name} (damaged)" if model.error else model.name
        if model.error:
            return format_size(model.size_bytes) if column == 4 else "\u2014"
        return (
            model.family_label,
            f"{model.native_size} \u00d7 {model.native_size}",
            model.precision,
            format_size(model.size_bytes),
        )[column - 1]

    def _valid(self, index: Index) -> bool:
        return (
            index.isValid() and not index.parent().isValid()
            and 0 <= index.row() < len(self._models) and 0 <= index.column() < len(self.COLUMNS)
        )


# -- the dialog --------------------------------------------------------------------------------


class ModelManagerDialog(QDialog):
    model_chosen = Signal(str)  # "Use" pressed on a model
    model_renamed = Signal(str, str)  # old name, new name
    model_deleted = Signal(str)

    def __init__(
        self,
        library: ModelLibrary,
        importer: ModelImporter,
        options: Callable[[], ConvertOptions],
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.setAcceptDrops(True)
        self.resize(760, 420)
        self.library = library
        self._importer = importer
        self._options = options
        self.model = ModelListModel(library, self)

        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.selectionModel().selectionChanged.connect(lambda *_: self._update_buttons())
        self.table.doubleClicked.connect(lambda _: self.use_selected())
        self.empty_label = QLabel(
            "No models yet. Import a Stable Diffusion checkpoint (.safetensors, SD 1.x, 2.x or SDXL) "
            "from a file or a Hugging Face repo, or drop one here.",
            wordWrap=True,
        )
        self.message = QLabel(wordWrap=True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.import_file_button = QPushButton("Import File\u2026")
        self.import_file_button.clicked.connect(self.import_file)
        self.import_repo_button = QPushButton("Import from Hugging Face\u2026")
        self.import_repo_button.clicked.connect(self.import_repo)
        self.rename_button = QPushButton("Rename\u2026")
        self.rename_button.clicked.connect(self.rename_selected)
        self.delete_button = QPushButton("Delete\u2026")
        self.delete_button.clicked.connect(self.delete_selected)
        self.use_button = QPushButton("Use This Model")
        self.use_button.clicked.connect(self.use_selected)
        row = QHBoxLayout()
        for button in (self.import_file_button, self.import_repo_button, self.rename_button, self.delete_button):
            row.addWidget(button)
        row.addStretch(1)
        row.addWidget(self.use_button)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.empty_label)
        layout.addWidget(self.message)
        layout.addLayout(row)
        layout.addWidget(close)

        importer.imported.connect(self._on_imported)
        importer.failed.connect(lambda text: self.show_message(f"The model could not be imported: {text}"))
        importer.cancelled.connect(lambda: self.show_message("Import cancelled; nothing was added."))
        self._refresh()

    # -- public ----------------------------------------------------------------------------------

    def selected(self) -> ModelInfo | None:
        rows = self.table.selectionModel().selectedRows()
        return self.model.info(rows[0].row()) if rows else None

    def select(self, name: str) -> None:
        row = self.model.row_of(name)
        if row is not None:
            self.table.selectRow(row)

    def show_message(self, text: str) -> None:
        self.message.setText(text)

    def import_source(self, source: str | Path) -> None:
        if self._importer.start(source, self.library, self._options()):
            self.show_message("")

    def import_file(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Import Checkpoint", str(Path.home()), CHECKPOINT_FILTER)
        if name:
            self.import_source(Path(name))

    def import_repo(self) -> None:
        repo, ok = QInputDialog.getText(
            self, "Import from Hugging Face",
            f"The repo id of a diffusers pipeline (owner/name), e.g. {REPO_EXAMPLE}:",
            QLineEdit.EchoMode.Normal, "",
        )
        repo = repo.strip()
        if not ok or not repo:
            return
        if not looks_like_repo_id(repo):
            self.show_message(f"Expected a Hugging Face repo id such as {REPO_EXAMPLE}, got {repo!r}.")
            return
        self.import_source(repo)

    def rename_selected(self) -> None:
        model = self.selected()
        if model is None or model.bundled:
            return
        new_name, ok = QInputDialog.getText(self, "Rename Model", "New name:", QLineEdit.EchoMode.Normal, model.name)
        if not ok or new_name.strip() == model.name:
            return
        try:
            renamed = self.library.rename(model.name, new_name)
        except ModelLibraryError as exc:
            self.show_message(str(exc).capitalize() + ".")
            return
        self._refresh(select=renamed.name)
        self.model_renamed.emit(model.name, renamed.name)

    def delete_selected(self) -> None:
        model = self.selected()
        if model is None or model.bundled:
            return
        answer = QMessageBox.question(
            self, "Delete Model",
            f"Delete the model {model.name} ({format_size(model.size_bytes)})?\n\n"
            "Its files are removed from the library. Images made with it stay in the history.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Cancel,
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        try:
            self.library.delete(model.name)
        except ModelLibraryError as exc:
            self.show_message(str(exc).capitalize() + ".")
            return
        self._refresh()
        self.show_message(f"Deleted {model.name}.")
        self.model_deleted.emit(model.name)

    def use_selected(self) -> None:
        model = self.selected()
        if model is not None and model.usable:
            self.model_chosen.emit(model.name)
            self.accept()

    # -- drops -----------------------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if _checkpoint_from(event.mimeData().urls()) is not None:
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        path = _checkpoint_from(event.mimeData().urls())
        if path is not None:
            event.acceptProposedAction()
            self.import_source(path)

    # -- internals -------------------------------------------------------------------------------

    def _on_imported(self, name: str) -> None:
        self._refresh(select=name)
        self.show_message(f"Imported {name}; it is ready to use.")

    def _refresh(self, select: str | None = None) -> None:
        self.model.reload()
        empty = not any(not m.bundled for m in self.library.models())
        self.empty_label.setVisible(empty)
        if select is not None:
            self.select(select)
        self._update_buttons()

    def _update_buttons(self) -> None:
        model = self.selected()
        own = model is not None and not model.bundled
        self.rename_button.setEnabled(own)
        self.delete_button.setEnabled(own)
        self.use_button.setEnabled(model is not None and model.usable)


def _checkpoint_from(urls: list[QUrl]) -> Path | None:
    paths = [Path(u.toLocalFile()) for u in urls if u.isLocalFile()]
    if len(paths) == 1 and paths[0].suffix.lower() in CHECKPOINT_SUFFIXES:
        return paths[0]
    return None


# -- plugging into the main window -------------------------------------------------------------


class ModelManagerPlugin(QObject):
    """The model manager plugged into the main window: dropped and chosen checkpoints import through
    the converter, Models > Manage Models… opens the dialog, renames and deletes reach the model picker
    and the default-model setting."""

    def __init__(self, window: "MainWindow", settings_path: Path | None):
        super().__init__(window)
        self._window = window
        self._settings_path = settings_path
        self.importer = ModelImporter(window)
        self.dialog: ModelManagerDialog | None = None
        window.set_checkpoint_importer(lambda path: self.importer.start(path, window.picker.library, self.options()))
        self.importer.imported.connect(self._imported)
        self.importer.failed.connect(lambda text: window.show_error("The model could not be imported", text))
        window.menu("Models").addAction("Manage Models\u2026", self.open)

    def options(self) -> ConvertOptions:
        return ConvertOptions(dtype=self._window.settings.precision)

    def open(self) -> ModelManagerDialog:
        window = self._window
        dialog = ModelManagerDialog(window.picker.library, self.importer, self.options, window)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.model_chosen.connect(window.picker.select)
        dialog.model_renamed.connect(self._renamed)
        dialog.model_deleted.connect(self._deleted)
        current = window.picker.current()
        if current is not None:
            dialog.select(current.name)
        dialog.open()
        self.dialog = dialog
        return dialog

    def _imported(self, name: str) -> None:
        self._window.refresh_models(name)
        self._window.show_info(f"Imported {name}", "It is selected and ready to generate with.")

    def _renamed(self, old: str, new: str) -> None:
        current = self._window.picker.current()
        self._window.refresh_models(new if current is not None and current.name == old else None)
        if self._window.settings.default_model == old:
            self._set_default_model(new)

    def _deleted(self, name: str) -> None:
        self._window.refresh_models()
        if self._window.settings.default_model == name:
            self._set_default_model("")

    def _set_default_model(self, name: str) -> None:
        settings = dataclasses.replace(self._window.settings, default_model=name)
        if self._settings_path is not None:
            try:
                save_settings(settings, self._settings_path)
            except OSError as exc:
                self._window.show_error("The settings could not be saved", str(exc))
        self._window.apply_settings(settings)


def install_model_manager(window: "MainWindow", settings_path: Path | None = None) -> ModelManagerPlugin:
    return ModelManagerPlugin(window, settings_path)
