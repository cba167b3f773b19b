"""The settings dialog: library folder (moving it keeps the history and the models), default model,
precision of imported models, low-memory mode, compute device (GPU or CPU, as MLX offers), the CPU's
precision (bfloat16 products where the CPU has AVX512_BF16), live preview frequency, output format, the
upscaler models' tile size, reading pickle files (`.pt`, `.ckpt`), and serving the A1111 API on localhost
(with its port).

The dialog edits a copy of the typed `AppSettings` it is given and, on OK, writes them with
`save_settings` and emits `settings_saved`; fields it does not show (presets, prompt prefix and suffix)
pass through unchanged. Moving the library goes through a callback, so whoever holds the library
open (history connections, an import) can let go of it first.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from mlx_sd import available_precisions
from mlx_sd.device import gpu_available

from .history_store import DB_NAME, HistoryError, move_library
from mlx_sd.model_library import MODELS_DIR, ModelInfo
from .settings import CPU_PRECISIONS, DEVICES, OUTPUT_FORMATS, PRECISIONS, AppSettings, library_path, save_settings

if TYPE_CHECKING:
    from .main_window import MainWindow

PRECISION_LABELS = {
    "float16": "float16: half the size of float32 (recommended)",
    "bfloat16": "bfloat16: half the size, float32's range",
    "float32": "float32: full precision, twice the size",
}
DEVICE_LABELS = {"gpu": "GPU", "cpu": "CPU"}
CPU_PRECISION_LABELS = {
    "float32": "float32: exact (recommended)",
    "bfloat16": "bfloat16: about 1.4x faster, images slightly different",
}
FORMAT_LABELS = {"png": "PNG (lossless, parameters in the file)", "jpeg": "JPEG", "webp": "WebP"}
MAX_PREVIEW_EVERY = 100
MAX_UPSCALE_TILE = 2048
SERVE_API_TEXT = "Serve the A1111 API on localhost"
ALLOW_PICKLE_TEXT = "Allow pickle files (.pt, .ckpt)"
ALLOW_PICKLE_TIP = (
    "LoRAs, embeddings and VAEs in pickle files, and upscaler models dropped on the window, are read "
    "with a weights-only unpickler, but enable this only for files you trust."
)

LibraryMover = Callable[[Path, Path], None]


def is_library(folder: Path) -> bool:
    return (folder / DB_NAME).is_file() or (folder / MODELS_DIR).is_dir()


def has_content(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


class SettingsDialog(QDialog):
    settings_saved = Signal(object)  # AppSettings, after they were written

    def __init__(
        self,
        settings: AppSettings,
        settings_path: Path | None,
        default_library: Path,
        models: Sequence[ModelInfo] = (),
        move: LibraryMover = move_library,
        gpu: bool | None = None,
        bf16: bool | None = None,
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self._original = settings
        self._path = settings_path
        self._default_library = default_library
        self._move = move
        self._gpu = gpu_available() if gpu is None else gpu
        self._bf16 = "bfloat16" in available_precisions() if bf16 is None else bf16
        self.saved: AppSettings | None = None

        self.library_edit = QLineEdit(settings.library_folder)
        self.library_edit.setPlaceholderText(f"{default_library} (default)")
        choose = QPushButton("Choose\u2026")
        choose.clicked.connect(self.choose_library)
        reset = QPushButton("Default")
        reset.clicked.connect(lambda: self.library_edit.setText(""))
        library_row = QHBoxLayout()
        library_row.addWidget(self.library_edit, 1)
        library_row.addWidget(choose)
        library_row.addWidget(reset)

        self.model_combo = QComboBox()
        self.model_combo.addItem("The first installed model", "")
        for model in models:
            if model.usable:
                self.model_combo.addItem("Demo model (shapes)" if model.bundled else model.name, model.name)
        _select_data(self.model_combo, settings.default_model, missing=f"{settings.default_model} (not installed)")

        self.precision_combo = QComboBox()
        for name in PRECISIONS:
            self.precision_combo.addItem(PRECISION_LABELS[name], name)
        _select_data(self.precision_combo, settings.precision)

        self.low_memory_check = QCheckBox("Release the text encoders before the image model runs (slower, less memory)")
        self.low_memory_check.setChecked(settings.low_memory)
        self.dash_lines_check = QCheckBox("Prompt lines starting with \"-\" go to the negative prompt")
        self.dash_lines_check.setChecked(settings.dash_lines_negative)

        self.device_combo = QComboBox()
        for name in DEVICES:
            self.device_combo.addItem(DEVICE_LABELS[name], name)
        if self._gpu:
            _select_data(self.device_combo, settings.compute_device)
        else:
            _select_data(self.device_combo, "cpu")
            self.device_combo.setEnabled(False)
            self.device_combo.setToolTip("MLX offers no GPU on this computer, so the CPU is used.")

        self.cpu_precision_combo = QComboBox()
        for name in CPU_PRECISIONS:
            self.cpu_precision_combo.addItem(CPU_PRECISION_LABELS[name], name)
        if self._bf16:
            _select_data(self.cpu_precision_combo, settings.cpu_precision)
            self.cpu_precision_combo.setToolTip(
                "bfloat16 rounds the factors of every product, as torch's bfloat16 does; the GPU uses the model's precision."
            )
        else:
            _select_data(self.cpu_precision_combo, "float32")
            self.cpu_precision_combo.setEnabled(False)
            self.cpu_precision_combo.setToolTip("bfloat16 needs a CPU with AVX512_BF16 (AMD Zen 4, Intel Sapphire Rapids or later).")

        self.preview_spin = QSpinBox()
        self.preview_spin.setRange(0, MAX_PREVIEW_EVERY)
        self.preview_spin.setSpecialValueText("Off")
        self.preview_spin.setPrefix("every ")
        self.preview_spin.valueChanged.connect(self._name_preview_unit)
        self.preview_spin.setValue(min(settings.preview_every, MAX_PREVIEW_EVERY))
        self._name_preview_unit(self.preview_spin.value())

        self.format_combo = QComboBox()
        for name in OUTPUT_FORMATS:
            self.format_combo.addItem(FORMAT_LABELS[name], name)
        _select_data(self.format_combo, settings.output_format)

        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, MAX_UPSCALE_TILE)
        self.tile_spin.setSingleStep(32)
        self.tile_spin.setSpecialValueText("whole picture")
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setValue(min(settings.upscale_tile, MAX_UPSCALE_TILE))
        self.tile_spin.setToolTip("Upscaler models run on tiles of this many pixels a side: smaller tiles use less memory")

        self.allow_pickle_check = QCheckBox(ALLOW_PICKLE_TEXT)
        self.allow_pickle_check.setChecked(settings.allow_pickle)
        self.allow_pickle_check.setToolTip(ALLOW_PICKLE_TIP)

        self.serve_api_check = QCheckBox(SERVE_API_TEXT)
        self.serve_api_check.setChecked(settings.serve_api)
        self.api_port_spin = QSpinBox()
        self.api_port_spin.setRange(1, 65535)
        self.api_port_spin.setValue(settings.api_port)
        self.api_port_spin.setEnabled(settings.serve_api)
        self.serve_api_check.toggled.connect(self.api_port_spin.setEnabled)

        form = QFormLayout()
        form.addRow("Library folder", library_row)
        form.addRow("", _note("Your images, their history and your models. Moving it keeps all of them."))
        form.addRow("Default model", self.model_combo)
        form.addRow("Precision of imported models", self.precision_combo)
        form.addRow("Low-memory mode", self.low_memory_check)
        form.addRow("Prompt", self.dash_lines_check)
        form.addRow("Compute on", self.device_combo)
        form.addRow("CPU precision", self.cpu_precision_combo)
        form.addRow("Live preview", self.preview_spin)
        form.addRow("Save images as", self.format_combo)
        form.addRow("Upscaler tile size", self.tile_spin)
        form.addRow("Pickle files", self.allow_pickle_check)
        form.addRow("A1111 API", self.serve_api_check)
        form.addRow("API port", self.api_port_spin)
        form.addRow("", _note(
            "For SillyTavern, Open WebUI and scripts on this computer, at<br>http://127.0.0.1:&lt;port&gt;. "
            "They share the app's model and queue, and their images go into the history."
        ))
        self.message = QLabel(wordWrap=True)
        self.message.hide()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.message)
        layout.addWidget(buttons)
        self._fit_wrapped_text()

    def _fit_wrapped_text(self) -> None:
        """Qt's minimum size counts a wrapped label as one line: at the narrowest width the notes
        would be cut off. The minimum height is what the layout needs at that width."""
        self.setMinimumSize(0, 0)
        width = self.minimumSizeHint().width()
        self.setMinimumSize(width, self.layout().totalHeightForWidth(width))

    def settings(self) -> AppSettings:
        """The settings the widgets show, on top of the ones given (fields not shown are kept)."""
        folder = self.library_edit.text().strip()
        if folder and Path(folder).expanduser() == self._default_library:
            folder = ""
        device = self.device_combo.currentData() if self.device_combo.isEnabled() else self._original.compute_device
        cpu_precision = self.cpu_precision_combo.currentData()  # float32 where the CPU cannot do bfloat16
        return dataclasses.replace(
            self._original,
            library_folder=folder,
            default_model=self.model_combo.currentData(),
            precision=self.precision_combo.currentData(),
            low_memory=self.low_memory_check.isChecked(),
            dash_lines_negative=self.dash_lines_check.isChecked(),
            compute_device=device,
            cpu_precision=cpu_precision,
            preview_every=self.preview_spin.value(),
            output_format=self.format_combo.currentData(),
            upscale_tile=self.tile_spin.value(),
            allow_pickle=self.allow_pickle_check.isChecked(),
            serve_api=self.serve_api_check.isChecked(),
            api_port=self.api_port_spin.value(),
        ).validated()

    def _name_preview_unit(self, every: int) -> None:
        self.preview_spin.setSuffix(" step" if every == 1 else " steps")

    def choose_library(self) -> None:
        start = self.library_edit.text() or str(self._default_library)
        folder = QFileDialog.getExistingDirectory(self, "Choose the Library Folder", start)
        if folder:
            self.library_edit.setText(folder)

    def accept(self) -> None:
        settings = self.settings()
        old = library_path(self._original.library_folder, self._default_library)
        new = library_path(settings.library_folder, self._default_library)
        moved = False
        if _different(old, new):
            decision = self._library_decision(old, new)
            if decision is None:
                return
            if decision == "move":
                try:
                    self._move(old, new)
                except (HistoryError, OSError) as exc:
                    self._show_message(f"The library could not be moved: {exc}")
                    return
                moved = True
        if self._path is not None:
            try:
                save_settings(settings, self._path)
            except OSError as exc:
                if moved:  # keep library and settings in agreement: put the library back
                    self._move(new, old)
                self._show_message(f"The settings could not be saved: {exc}")
                return
        self.saved = settings
        self.settings_saved.emit(settings)
        super().accept()

    def _library_decision(self, old: Path, new: Path) -> str | None:
        """"move", "switch" or None (stay in the dialog), asking the user where it matters."""
        yes = QMessageBox.StandardButton.Yes
        buttons = QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel
        if is_library(new):
            answer = QMessageBox.question(
                self, "Use Another Library",
                f"{new} already holds an mlx-sd library. Switch to it?\n\nThe current library stays in {old}.",
                buttons, QMessageBox.StandardButton.Cancel,
            )
            return "switch" if answer == yes else None
        if has_content(new):
            self._show_message(f"{new} is not empty and is not an mlx-sd library; choose an empty or new folder.")
            return None
        if not has_content(old):
            return "switch"
        answer = QMessageBox.question(
            self, "Move the Library",
            f"Move your library (images, history and models) from\n{old}\nto\n{new}?",
            buttons, QMessageBox.StandardButton.Cancel,
        )
        return "move" if answer == yes else None

    def _show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.show()
        self._fit_wrapped_text()


def _different(a: Path, b: Path) -> bool:
    try:
        return a.resolve() != b.resolve()
    except OSError:
        return os.path.abspath(a) != os.path.abspath(b)


def _select_data(combo: QComboBox, value: str, missing: str | None = None) -> None:
    """Select the item holding `value`; add it (labelled `missing`) when absent and `missing` is given."""
    index = combo.findData(value)
    if index < 0 and missing is not None and value:
        combo.addItem(missing, value)
        index = combo.count() - 1
    combo.setCurrentIndex(max(0, index))


def _note(text: str) -> QLabel:
    label = QLabel(text, wordWrap=True)
    label.setEnabled(False)  # drawn in the palette's disabled (secondary) colour
    return label


# -- plugging into the main window ---------------------------------------------------------------


class SettingsPlugin(QObject):
    """File > Settings… in the main window. Before a library move everything holding it open lets go
    (the window's worker and the `releasers`), afterwards every listener is told the new folder."""

    def __init__(
        self,
        window: "MainWindow",
        settings_path: Path | None,
        default_library: Path,
        releasers: Sequence[Callable[[], None]] = (),
        listeners: Sequence[Callable[[Path], None]] = (),
    ):
        super().__init__(window)
        self._window = window
        self._path = settings_path
        self._default_library = default_library
        self._releasers = list(releasers)
        self._listeners = list(listeners)
        self.dialog: SettingsDialog | None = None
        action = QAction("Settings\u2026", window)
        action.setShortcut(QKeySequence.StandardKey.Preferences)
        action.setMenuRole(QAction.MenuRole.PreferencesRole)  # macOS: the application menu
        action.triggered.connect(lambda _=False: self.open())
        _add_above_quit(window.menu("File"), action)

    def open(self) -> SettingsDialog:
        window = self._window
        dialog = SettingsDialog(
            window.settings, self._path, self._default_library, window.picker.library.models(), self._move, parent=window,
        )
        dialog.settings_saved.connect(self._apply)
        dialog.open()
        self.dialog = dialog
        return dialog

    def _move(self, old: Path, new: Path) -> None:
        self._window.release_library()
        for release in self._releasers:
            release()
        try:
            move_library(old, new)
        finally:  # moved or not, everyone opens the library where it now is
            where = new if new.exists() and not old.exists() else old
            self._switch(where)

    def _apply(self, settings: AppSettings) -> None:
        folder = library_path(settings.library_folder, self._default_library)
        self._window.apply_settings(settings)
        if _different(folder, self._window.library):
            self._switch(folder)

    def _switch(self, folder: Path) -> None:
        if _different(folder, self._window.library):
            self._window.release_library()
            for release in self._releasers:
                release()
        self._window.set_library(folder)
        for listener in self._listeners:
            listener(folder)


def _add_above_quit(menu: QMenu, action: QAction) -> None:
    quit_action = next((a for a in menu.actions() if a.text().replace("&", "") == "Quit"), None)
    if quit_action is None:
        menu.addAction(action)
        return
    menu.insertAction(quit_action, action)
    menu.insertSeparator(quit_action)


def install_settings_dialog(
    window: "MainWindow",
    settings_path: Path | None,
    default_library: Path,
    releasers: Sequence[Callable[[], None]] = (),
    listeners: Sequence[Callable[[Path], None]] = (),
) -> SettingsPlugin:
    return SettingsPlugin(window, settings_path, default_library, releasers, listeners)
