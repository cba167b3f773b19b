"""The model manager: a dialog listing the library's models (family, native size, precision, size on
disk) that imports from a checkpoint file or a Hugging Face repo id, renames and deletes.

Imports run through `app.model_import.ModelImporter` (the converter on a worker thread behind a
cancellable progress dialog), shared by the dialog and the main window (dropped checkpoints);
`install_model_manager` plugs both into the window.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt, QUrl, Signal
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
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from convert import ConvertOptions
from convert.hub import looks_like_repo_id

from .drop_handler import CHECKPOINT_FILTER, CHECKPOINT_SUFFIXES
from .model_catalogue import CatalogueDialog, CatalogueEntry
from .model_import import ModelImporter, hub_converter
from mlx_sd.model_library import ModelInfo, ModelLibrary, ModelLibraryError

if TYPE_CHECKING:
    from .main_window import MainWindow

Index = QModelIndex | QPersistentModelIndex
REPO_EXAMPLE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DOWNLOADS_DIR = "downloads"  # in the library: a catalogue download until it is converted
IMPORT_HINT = (
    "Import a Stable Diffusion checkpoint (.safetensors, SD 1.x, 2.x or SDXL) from a file or a Hugging Face "
    "repo, or drop one here."
)


def format_size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


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
        self.empty_label = QLabel(wordWrap=True)
        self.message = QLabel(wordWrap=True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.import_file_button = QPushButton("Import File\u2026")
        self.import_file_button.clicked.connect(self.import_file)
        self.import_repo_button = QPushButton("Import from Hugging Face\u2026")
        self.import_repo_button.clicked.connect(self.import_repo)
        self.catalogue_button = QPushButton("Get Models\u2026")
        self.catalogue_button.setToolTip("Download a well-known model (SD 1.5, SDXL, Turbo, …) and import it")
        self.catalogue_button.clicked.connect(self.open_catalogue)
        self.rename_button = QPushButton("Rename\u2026")
        self.rename_button.clicked.connect(self.rename_selected)
        self.delete_button = QPushButton("Delete\u2026")
        self.delete_button.clicked.connect(self.delete_selected)
        self.use_button = QPushButton("Use This Model")
        self.use_button.clicked.connect(self.use_selected)
        row = QHBoxLayout()
        for button in (self.catalogue_button, self.import_file_button, self.import_repo_button, self.rename_button,
                       self.delete_button):
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

    def open_catalogue(self) -> CatalogueDialog:
        dialog = CatalogueDialog(parent=self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.chosen.connect(self.download)
        dialog.open()
        return dialog

    def download(self, entry: CatalogueEntry) -> None:
        """Download a catalogue entry and import it (Cancel in the progress dialog stops the download)."""
        options = dataclasses.replace(self._options(), variant=entry.variant)
        converter = hub_converter(self.library.library / DOWNLOADS_DIR)
        if self._importer.start(entry.repo_id, self.library, options, converter):
            self.show_message("")

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
        models = self.library.models()
        empty = not any(not m.bundled for m in models)
        self.empty_label.setVisible(empty)
        # with the demo listed above, "no models" would contradict the list
        self.empty_label.setText(("Only the bundled demo model so far. " if models else "No models yet. ") + IMPORT_HINT)
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

    def __init__(self, window: "MainWindow"):
        super().__init__(window)
        self._window = window
        self.importer = ModelImporter(window)
        self.dialog: ModelManagerDialog | None = None
        window.set_checkpoint_importer(lambda path: self.importer.start(path, window.picker.library, self.options()))
        self.importer.imported.connect(self._imported)
        self.importer.failed.connect(self._failed)
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

    def _dialog_open(self) -> bool:
        """Whether the manager is open: then it says what happened, and the window says nothing."""
        try:
            return self.dialog is not None and self.dialog.isVisible()
        except RuntimeError:  # the closed dialog deleted itself
            return False

    def _imported(self, name: str) -> None:
        self._window.refresh_models(name)
        if not self._dialog_open():
            self._window.show_info(f"Imported {name}", "It is selected and ready to generate with.")

    def _failed(self, text: str) -> None:
        if not self._dialog_open():
            self._window.show_error("The model could not be imported", text)

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
        self._window.update_settings(dataclasses.replace(self._window.settings, default_model=name))


def install_model_manager(window: "MainWindow") -> ModelManagerPlugin:
    return ModelManagerPlugin(window)
