"""The history browser: a lazily fetched thumbnail grid with full-text search, filters by model, date
and favourites, a details pane with the parameters that apply to the image under human labels, and the
actions on one image (reuse all parameters, reuse the seed, copy the parameters as A1111 text, use as
img2img source, open, reveal, export, favourite, delete). It is the window's History tab; the window
also shows the selected image large in its Image tab.

The browser reads its own HistoryStore on the UI thread (the generation worker writes through another
connection); call `reload()` after new images are recorded. What the window should do with a reused
request or an img2img source is up to the window: the browser only emits signals.
"""

from __future__ import annotations

import dataclasses
import html
import shutil
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from PIL import Image
from PySide6.QtCore import QItemSelection, QModelIndex, QObject, QPoint, QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices, QGuiApplication, QImageReader, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QMenu,
    QMessageBox,
    QSizePolicy,
    QSplitter,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from mlx_sd.image_metadata import FORMATS, ImageMetadataError, save_image
from mlx_sd.infotext import request_from_infotext
from mlx_sd.request import GenerationRequest

from .history_record import NOT_RECORDED
from .history_model import HistoryListModel
from .history_store import HistoryEntry, HistoryError, HistoryQuery, HistoryStore
from .result_view import SAVE_FILTERS

if TYPE_CHECKING:
    from .main_window import MainWindow

ALL_MODELS = "All models"
SEARCH_DELAY_MS = 200  # search as the user types, once they pause
GRID_ICON = QSize(112, 112)
PREVIEW_SIDE = 180
# recorded request fields -> what the details pane calls them (A1111's words where it has them)
LABELS = {
    "sampler": "Sampler",
    "schedule": "Schedule",
    "steps": "Steps",
    "cfg_scale": "CFG scale",
    "strength": "Denoising strength",
    "clip_skip": "Clip skip",
    "batch_size": "Batch size",
    "batch_count": "Batch count",
    "aesthetic_score": "Aesthetic score",
    "negative_aesthetic_score": "Negative aesthetic score",
    "vae_tiling": "VAE tiling",
    "low_memory": "Low memory",
}
EXPORT_FILTERS = ";;".join(SAVE_FILTERS.values())


# -- Qt-free helpers -------------------------------------------------------------------------


def request_from_entry(entry: HistoryEntry) -> GenerationRequest:
    """A request that regenerates the entry's image: its infotext read as A1111 would, then every
    recorded request field of the right type on top, with the seed this image used."""
    g = entry.generation
    request = request_from_infotext(g.infotext) if g.infotext.strip() else GenerationRequest()
    defaults = GenerationRequest()
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(GenerationRequest):
        if f.name in NOT_RECORDED or f.name not in g.params:
            continue
        value, default = g.params[f.name], getattr(defaults, f.name)
        if _same_kind(value, default):
            changes[f.name] = float(value) if isinstance(default, float) else value
    changes.update(prompt=g.prompt, negative_prompt=g.negative_prompt, seed=g.seed)
    return dataclasses.replace(request, **changes)


def _same_kind(value: object, default: object) -> bool:
    """Whether a recorded JSON value fits a request field with this default (bool is not an int)."""
    if default is None:  # vae_tiling: True, False or None (automatic)
        return value is None or isinstance(value, bool)
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return type(value) is type(default)


DATE_RANGES = ("Any time", "Today", "Past 7 days", "Past 30 days", "Past year")


def date_since(choice: str, now: float) -> float | None:
    """The start of a date filter as unix time (local midnight for whole days), None for any time."""
    if choice == DATE_RANGES[0]:
        return None
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    days = {"Today": 0, "Past 7 days": 6, "Past 30 days": 29, "Past year": 364}[choice]
    return (midnight - timedelta(days=days)).timestamp()


def export_entry(entry: HistoryEntry, target: Path) -> Path:
    """Write the entry's image to `target` with its parameters; the format follows the suffix
    (.png copies the file as recorded, .jpg/.jpeg/.webp re-encode with the infotext in EXIF)."""
    if target.suffix.lower() not in FORMATS:
        target = target.with_name(target.name + ".png")
    if target.suffix.lower() == ".png":
        if target.resolve() != entry.image_path.resolve():
            shutil.copyfile(entry.image_path, target)
        return target
    with Image.open(entry.image_path) as image:
        image.load()
        return save_image(image, target, entry.generation.infotext or None)


def applies(name: str, value: object, params: dict[str, Any]) -> bool:
    """Whether a recorded parameter says something about this image: a strength only for image to
    image, the refiner's aesthetic scores, clip skip, batches and switches only when not the default."""
    if name == "strength":
        return params.get("img2img") is True
    if name in ("prompt", "negative_prompt", "seed", "width", "height", "img2img", "mask_blur"):
        return False
    if name in ("sampler", "schedule", "steps", "cfg_scale") or name not in LABELS:
        return True
    return value != getattr(GenerationRequest(), name)


def detail_rows(entry: HistoryEntry) -> list[tuple[str, str]]:
    """The image's details as (label, text): the prompt first, then the parameters that apply."""
    g = entry.generation
    rows: list[tuple[str, str]] = [
        ("Prompt", g.prompt),
        ("Negative prompt", g.negative_prompt or "(none)"),
        ("Model", g.model),
        ("Seed", str(g.seed)),
        ("Size", f"{g.width} \u00d7 {g.height}"),
    ]
    if g.params.get("img2img") is True:
        rows.append(("Mode", "image to image"))
    ordered = [name for name in LABELS if name in g.params] + sorted(n for n in g.params if n not in LABELS)
    rows += [
        (LABELS.get(name, name.replace("_", " ").capitalize()), _format_value(g.params[name]))
        for name in ordered if applies(name, g.params[name], g.params)
    ]
    rows += [
        ("Created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(g.created))),
        ("Favourite", "yes" if entry.favourite else "no"),
        ("File", str(entry.image_path)),
    ]
    return rows


def details_html(entry: HistoryEntry) -> str:
    """The details as an HTML table."""
    rows = detail_rows(entry)
    body = "".join(
        f"<tr><td style='padding-right:12px;color:palette(mid)'><b>{html.escape(k)}</b></td>"
        f"<td>{html.escape(v).replace(chr(10), '<br>')}</td></tr>"
        for k, v in rows
    )
    return f"<table cellspacing='2'>{body}</table>"


def _format_value(value: object) -> str:
    if value is None:
        return "automatic"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def open_path(path: Path) -> None:
    QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))


def reveal_path(path: Path) -> None:
    from .result_view import reveal  # the window's helper, so results and history reveal alike

    reveal(path)


# -- the widget ------------------------------------------------------------------------------


class HistoryBrowser(QWidget):
    reuse_parameters = Signal(object, str)  # GenerationRequest, model name
    reuse_seed = Signal(int)
    use_as_source = Signal(str)  # the image file's path
    entry_deleted = Signal(int)  # history entry id
    entry_selected = Signal(object)  # HistoryEntry | None: the window shows it large
    notice = Signal(str)  # a one-line outcome (exported, copied, a failure) for the window's status bar

    def __init__(self, store: HistoryStore | None, parent: QWidget | None = None, now: Callable[[], float] = time.time):
        super().__init__(parent)
        self._now = now
        self.model = HistoryListModel(store, parent=self)
        self.model.failed.connect(self._show_message)
        self._search_timer = QTimer(self, singleShot=True, interval=SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(self.apply_filters)
        self.last_message = ""
        self._resetting = False
        self._build()
        self._refresh_models()
        self._after_reset()

    # -- layout --------------------------------------------------------------------------------

    def _build(self) -> None:
        self.search_box = QLineEdit(placeholderText="Search prompts", clearButtonEnabled=True)
        self.search_box.textChanged.connect(lambda _: self._search_timer.start())
        self.search_box.returnPressed.connect(self.apply_filters)
        self.model_filter = QComboBox()
        self.model_filter.activated.connect(lambda _: self.apply_filters())
        self.date_filter = QComboBox()
        self.date_filter.addItems(DATE_RANGES)
        self.date_filter.activated.connect(lambda _: self.apply_filters())
        self.favourites_only = QCheckBox("Favourites only")
        self.favourites_only.toggled.connect(lambda _: self.apply_filters())
        self.count_label = QLabel()
        self.search_box.setAccessibleName("Search prompts")
        self.model_filter.setAccessibleName("Model filter")
        self.date_filter.setAccessibleName("Date filter")
        filters = QHBoxLayout()
        filters.addWidget(self.search_box, 3)
        filters.addWidget(self.model_filter, 1)
        filters.addWidget(self.date_filter, 1)
        filters.addWidget(self.favourites_only)
        filters.addWidget(self.count_label)

        self.grid = QListView()
        self.grid.setViewMode(QListView.ViewMode.IconMode)
        self.grid.setMovement(QListView.Movement.Static)
        self.grid.setResizeMode(QListView.ResizeMode.Adjust)
        self.grid.setUniformItemSizes(True)
        self.grid.setIconSize(GRID_ICON)
        self.grid.setGridSize(QSize(GRID_ICON.width() + 16, GRID_ICON.height() + 28))
        self.grid.setWordWrap(False)
        self.grid.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.grid.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.grid.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.grid.customContextMenuRequested.connect(self._context_menu)
        self.grid.setAccessibleName("History images")
        self.grid.setModel(self.model)
        self.grid.selectionModel().selectionChanged.connect(self._selection_changed)
        self.grid.doubleClicked.connect(lambda _: self.reuse_all())
        self.empty_label = QLabel(alignment=Qt.AlignmentFlag.AlignCenter, wordWrap=True)

        self.preview = QLabel(alignment=Qt.AlignmentFlag.AlignCenter)
        self.preview.setFixedSize(QSize(PREVIEW_SIDE, PREVIEW_SIDE))
        self.details = QTextBrowser(openLinks=False)
        self.details.setAccessibleName("Image details")
        self.actions_by_name: dict[str, QAction] = {}
        buttons = QGridLayout()
        specs = (
            ("reuse", "Reuse Parameters", self.reuse_all, None),
            ("seed", "Reuse Seed", self.reuse_seed_of_selection, None),
            ("copy", "Copy Parameters", self.copy_parameters, None),
            ("source", "Use as img2img Source", self.use_selection_as_source, None),
            ("favourite", "Favourite", self.toggle_favourite, None),
            ("open", "Open", self.open_selection, None),
            ("reveal", "Show in Finder" if sys.platform == "darwin" else "Show in Folder",
             self.reveal_selection, None),
            ("export", "Export\u2026", self.export_selection, None),
            ("delete", "Delete\u2026", self.delete_selection, QKeySequence.StandardKey.Delete),
        )
        for i, (name, label, slot, shortcut) in enumerate(specs):
            action = QAction(label, self)
            action.triggered.connect(slot)
            if shortcut is not None:
                action.setShortcut(shortcut)
                action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
                self.grid.addAction(action)
            self.actions_by_name[name] = action
            button = QToolButton()  # follows the action's text and enabled state
            button.setDefaultAction(action)
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
            buttons.addWidget(button, i // 3, i % 3)

        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        top.addWidget(self.preview, 0, Qt.AlignmentFlag.AlignTop)
        top.addWidget(self.details, 1)
        side_layout.addLayout(top, 1)
        side_layout.addLayout(buttons)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.grid, 1)
        left_layout.addWidget(self.empty_label)
        # the gallery, and the selected image's details beside it
        self.splitter = QSplitter()
        self.splitter.setObjectName("historySplitter")  # its position is kept with the window's
        self.splitter.addWidget(left)
        self.splitter.addWidget(side)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(filters)
        layout.addWidget(self.splitter, 1)

    # -- public ----------------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the history afresh (call after images were recorded), keeping search and filters."""
        self._refresh_models()
        self.model.reload()
        self._after_reset()

    def set_store(self, store: HistoryStore | None) -> None:
        """Show another library's history (after the library moved), or none while it moves."""
        self.model.set_store(store)
        self._refresh_models()
        self._after_reset()

    def current_query(self) -> HistoryQuery:
        model = self.model_filter.currentText()
        return HistoryQuery(
            text=self.search_box.text().strip(),
            model=None if self.model_filter.currentIndex() <= 0 else model,
            since=date_since(self.date_filter.currentText(), self._now()),
            favourites_only=self.favourites_only.isChecked(),
        )

    def apply_filters(self) -> None:
        self._search_timer.stop()
        self.model.set_query(self.current_query())
        self._after_reset()

    def selected_row(self) -> int | None:
        rows = self.grid.selectionModel().selectedIndexes()
        return rows[0].row() if rows else None

    def selected_entry(self) -> HistoryEntry | None:
        row = self.selected_row()
        return self.model.entry(row) if row is not None else None

    def select_row(self, row: int) -> None:
        self.grid.setCurrentIndex(self.model.index(row))

    # -- actions ---------------------------------------------------------------------------------

    def reuse_all(self) -> None:
        entry = self.selected_entry()
        if entry is not None:
            self.reuse_parameters.emit(request_from_entry(entry), entry.generation.model)

    def reuse_seed_of_selection(self) -> None:
        entry = self.selected_entry()
        if entry is not None:
            self.reuse_seed.emit(entry.generation.seed)

    def use_selection_as_source(self) -> None:
        entry = self.selected_entry()
        if entry is not None:
            self.use_as_source.emit(str(entry.image_path))

    def copy_parameters(self) -> None:
        """The selected image's parameters as A1111's text, as the web UI's PNG Info shows them."""
        entry = self.selected_entry()
        if entry is not None:
            QGuiApplication.clipboard().setText(entry.generation.infotext)
            self._show_message("Copied the parameters")

    def open_selection(self) -> None:
        entry = self.selected_entry()
        if entry is not None:
            open_path(entry.image_path)

    def reveal_selection(self) -> None:
        entry = self.selected_entry()
        if entry is not None:
            reveal_path(entry.image_path)

    def toggle_favourite(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        favourite = not self.model.entry(row).favourite
        try:
            self.model.set_favourite(row, favourite)
        except HistoryError as exc:
            self._show_message(str(exc))
        self._update_count()
        self._show_selection()

    def export_selection(self) -> None:
        entry = self.selected_entry()
        if entry is None:
            return
        suggested = str(Path.home() / entry.image_path.name)
        name, _ = QFileDialog.getSaveFileName(self, "Export Image", suggested, EXPORT_FILTERS)
        if not name:
            return
        try:
            written = export_entry(entry, Path(name))
        except (OSError, ImageMetadataError) as exc:
            self._show_message(f"Could not export the image: {exc}")
            return
        self._show_message(f"Exported to {written}")

    def delete_selection(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        entry = self.model.entry(row)
        answer = QMessageBox.question(
            self, "Delete Image",
            f"Delete this image and its file?\n\n{entry.image_path.name}\n\nThis cannot be undone.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Cancel,
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        try:
            self.model.delete(row)
        except HistoryError as exc:
            self._show_message(str(exc))
            return
        self.entry_deleted.emit(entry.id)
        self._update_count()
        if self.model.rowCount():
            self.select_row(min(row, self.model.rowCount() - 1))
        else:
            self._show_selection()

    # -- internals -------------------------------------------------------------------------------

    def _refresh_models(self) -> None:
        current = self.model_filter.currentText()
        self.model_filter.clear()
        self.model_filter.addItem(ALL_MODELS)
        self.model_filter.addItems(self.model.models())
        found = self.model_filter.findText(current)
        self.model_filter.setCurrentIndex(max(0, found))

    def _after_reset(self) -> None:
        self._resetting = True
        self._update_count()
        if self.model.canFetchMore():
            self.model.fetchMore()
        if self.model.rowCount():
            self.select_row(0)
        self._show_selection()
        self._resetting = False

    def _update_count(self) -> None:
        total = self.model.total
        self.count_label.setText(f"{total:,} image{'s' if total != 1 else ''}")
        filtered = self.current_query() != HistoryQuery()
        self.grid.setVisible(total > 0)
        self.empty_label.setVisible(total == 0)
        self.empty_label.setText(
            "No images match the search and filters." if filtered
            else "No images yet: everything you generate is kept here."
        )

    def _selection_changed(self, selected: QItemSelection, deselected: QItemSelection) -> None:
        self._show_selection()

    def _show_selection(self) -> None:
        entry = self.selected_entry()
        for action in self.actions_by_name.values():
            action.setEnabled(entry is not None)
        if not self._resetting:  # a reload's automatic selection must not replace the window's results
            self.entry_selected.emit(entry)
        if entry is None:
            self.details.clear()
            self.preview.clear()
            return
        self.details.setHtml(details_html(entry))
        self.actions_by_name["favourite"].setText("Unfavourite" if entry.favourite else "Favourite")
        preview = _load_preview(entry.image_path)
        if preview.isNull():
            self.preview.setText("The image file is missing\nor cannot be read.")
        else:
            self.preview.setPixmap(preview)

    def _context_menu(self, position: QPoint) -> None:
        index: QModelIndex = self.grid.indexAt(position)
        if not index.isValid():
            return
        self.select_row(index.row())
        menu = QMenu(self)
        for name in ("reuse", "seed", "copy", "source", "favourite", None, "open", "reveal", "export", None, "delete"):
            if name is None:
                menu.addSeparator()
            else:
                menu.addAction(self.actions_by_name[name])
        menu.popup(self.grid.viewport().mapToGlobal(position))

    def _show_message(self, text: str) -> None:
        self.last_message = text
        self.notice.emit(text)


def _load_preview(path: Path) -> QPixmap:
    """The image scaled to fit the details pane, decoded at that size (cheap for large images)."""
    reader = QImageReader(str(path))
    size = reader.size()
    if size.isValid():
        reader.setScaledSize(size.scaled(QSize(PREVIEW_SIDE, PREVIEW_SIDE), Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    return QPixmap.fromImage(image) if not image.isNull() else QPixmap()


# -- plugging into the main window -------------------------------------------------------------


class HistoryPanel(QObject):
    """The browser as the main window's History tab (View > History), on its own connection to the
    library's history: refreshed when images are recorded, closed and reopened when the library moves,
    its actions handed to the window."""

    def __init__(self, window: "MainWindow"):
        super().__init__(window)
        self._window = window
        self._store: HistoryStore | None = None
        self.browser = HistoryBrowser(None)
        self.show_action = window.add_panel("History", self.browser)
        self.show_action.setShortcut(QKeySequence("Ctrl+Shift+H"))
        # a batch records several images at once: reload once, after the last
        self._reload_timer = QTimer(self, singleShot=True, interval=0)
        self._reload_timer.timeout.connect(self.browser.reload)
        window.imageRecorded.connect(lambda _entry: self._reload_timer.start())
        self.browser.reuse_parameters.connect(window.reuse_request)
        self.browser.reuse_seed.connect(window.reuse_seed)
        self.browser.use_as_source.connect(window.use_image_file_as_source)
        self.browser.entry_selected.connect(window.show_history_entry)
        self.browser.notice.connect(lambda text: window.statusBar().showMessage(text, 5000))
        self.set_library(window.library)

    @property
    def store(self) -> HistoryStore | None:
        return self._store

    def release(self) -> None:
        """Close the history connection (before the library folder moves); the browser shows nothing."""
        self.browser.set_store(None)
        if self._store is not None:
            self._store.close()
            self._store = None

    def set_library(self, library: Path) -> None:
        self.release()
        try:
            self._store = HistoryStore(library)
        except HistoryError as exc:
            self._window.show_error("The history cannot be opened", f"{exc}. Choose another library folder in Settings.")
            return
        if self._store.notice:
            self._window.show_error("The history was damaged", self._store.notice)
        self.browser.set_store(self._store)


def install_history_browser(window: "MainWindow") -> HistoryPanel:
    return HistoryPanel(window)
