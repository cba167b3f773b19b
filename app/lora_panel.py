"""The LoRA and embeddings panel, a tab beside the image (like A1111's Extra Networks): the library's
LoRAs and embeddings with their family, trigger words and preview, searchable; a click adds
`<lora:NAME:1>` (or the embedding's name) to the prompt, the context menu to the negative prompt; the LoRAs the prompt uses show as chips whose
slider edits the tag's weight in the text. Items for another family than the model's are greyed, with
the reason as tooltip; a damaged file shows its one-line problem, and a pickle (`.pt`, `.ckpt`) is read only
while Settings > Allow pickle files is on (else it is greyed, saying so).

Listing the folders is quick and runs on the UI thread; reading each file (app.lora_info.read_info) runs
on a worker, one file at a time, and is cached by path, modification time and size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QObject,
    QPoint,
    QPersistentModelIndex,
    QRunnable,
    QSize,
    QSortFilterProxyModel,
    Qt,
    QThreadPool,
    Signal,
    Slot,
)
from PySide6.QtGui import QColor, QIcon, QImage, QPixmap, QShowEvent, QTextCursor
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QMenu,
    QPlainTextEdit,
    QScrollArea,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from mlx_sd.library import LABELS, Library, LibraryItem
from mlx_sd.pickle_files import is_pickle

from mlx_sd.model_library import FAMILY_LABELS

from .lora_info import CacheKey, InfoCache, ResourceInfo, cache_key, folder_hint, missing_resources, read_info
from .prompt_loras import add_lora, add_word, format_weight, prompt_loras, remove_lora, set_lora_weight

if TYPE_CHECKING:
    from .main_window import MainWindow

PANEL_KINDS = ("loras", "embeddings")
ICON_SIZE = 48
WEIGHT_STEP = 0.05  # the chips' slider moves in these steps
WEIGHT_RANGE = (-1.0, 2.0)
KIND_FILTERS = {"All": PANEL_KINDS, "LoRAs": ("loras",), "Embeddings": ("embeddings",)}

Index = QModelIndex | QPersistentModelIndex


# -- reading files on a worker ----------------------------------------------------------------


@dataclass(frozen=True)
class _Read:
    """One file to read: where its answer goes in the cache, and how pickles are read."""

    path: str
    key: CacheKey | None
    allow_pickle: bool

    @property
    def token(self) -> tuple[str, bool]:
        """One read at a time per file and way of reading it."""
        return self.path, self.key is not None and self.key[3]


class _ReadSignals(QObject):
    read = Signal(object, object, object)  # _Read, ResourceInfo, QImage | None (the preview's thumbnail)


class _ReadJob(QRunnable):
    def __init__(self, item: LibraryItem, read: _Read, signals: _ReadSignals):
        super().__init__()
        self.item, self.read, self.signals = item, read, signals

    def run(self) -> None:
        info = read_info(self.item, self.read.allow_pickle)
        thumbnail = None
        if info.preview is not None:
            image = QImage(str(info.preview))  # QImage (not QPixmap) may be made off the UI thread
            if not image.isNull():
                thumbnail = image.scaled(ICON_SIZE, ICON_SIZE, Qt.AspectRatioMode.KeepAspectRatio,
                                         Qt.TransformationMode.SmoothTransformation)
        self.signals.read.emit(self.read, info, thumbnail)


# -- the list ---------------------------------------------------------------------------------


class ResourceListModel(QAbstractListModel):
    """The library's LoRAs and embeddings, one row each, greyed when unsuitable for `family`."""

    SearchRole = Qt.ItemDataRole.UserRole + 1  # name and trigger words, what the search box matches
    KindRole = Qt.ItemDataRole.UserRole + 2
    InfoRole = Qt.ItemDataRole.UserRole + 3

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._rows: list[ResourceInfo] = []
        self._icons: dict[str, QIcon] = {}  # by path
        blank = QPixmap(ICON_SIZE, ICON_SIZE)
        blank.fill(Qt.GlobalColor.transparent)
        self._blank = QIcon(blank)  # rows without a preview keep their names in line with the others
        self.family: str | None = None

    def rowCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        info = self._rows[index.row()]
        problem = info.unsuitable_for(self.family)
        if role == Qt.ItemDataRole.DisplayRole:
            return f"{info.name}\n{self.detail(info)}"
        if role == Qt.ItemDataRole.ToolTipRole:
            return problem or f"{info.path}\nClick to add it to the prompt"
        if role == Qt.ItemDataRole.DecorationRole:
            return self._icons.get(str(info.path), self._blank)
        if role == Qt.ItemDataRole.ForegroundRole and problem:
            return QColor(Qt.GlobalColor.gray)
        if role == self.SearchRole:
            return " ".join((info.name, *info.triggers))
        if role == self.KindRole:
            return info.kind
        if role == self.InfoRole:
            return info
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        if self._rows[index.row()].unsuitable_for(self.family):
            return Qt.ItemFlag.NoItemFlags  # greyed: not clickable, the tooltip says why
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    @staticmethod
    def detail(info: ResourceInfo) -> str:
        """The line under the name: kind, family and trigger words, or the file's problem, or why it was not read."""
        if info.error:
            return f"⚠ {info.error}"
        if info.refused:
            return f"{LABELS[info.kind]} · {info.refused}"
        parts = [LABELS[info.kind]]
        if not info.loaded:
            parts.append("reading…")
        elif info.families:
            parts.append(" / ".join(sorted(FAMILY_LABELS.get(f, f) for f in info.families)))
        if info.note:
            parts.append(info.note)
        if info.triggers:
            parts.append(", ".join(info.triggers))
        return " · ".join(parts)

    def set_rows(self, rows: list[ResourceInfo]) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def set_family(self, family: str | None) -> None:
        self.beginResetModel()  # flags change too, which dataChanged does not promise to views
        self.family = family
        self.endResetModel()

    def update_info(self, info: ResourceInfo, thumbnail: QImage | None) -> None:
        if thumbnail is not None:
            self._icons[str(info.path)] = QIcon(QPixmap.fromImage(thumbnail))
        for row, old in enumerate(self._rows):
            if old.path == info.path:
                self._rows[row] = info
                self.dataChanged.emit(self.index(row), self.index(row))

    def info(self, row: int) -> ResourceInfo:
        return self._rows[row]

    def names(self, kind: str) -> set[str]:
        return {info.name for info in self._rows if info.kind == kind}


class ResourceFilter(QSortFilterProxyModel):
    """The rows whose name or trigger words hold the search text, of the chosen kinds."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.kinds: tuple[str, ...] = PANEL_KINDS
        self.setFilterRole(ResourceListModel.SearchRole)
        self.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)

    def set_kinds(self, kinds: tuple[str, ...]) -> None:
        self.beginFilterChange()
        self.kinds = kinds
        self.endFilterChange()

    def filterAcceptsRow(self, source_row: int, source_parent: Index) -> bool:
        index = self.sourceModel().index(source_row, 0, source_parent)
        return index.data(ResourceListModel.KindRole) in self.kinds and super().filterAcceptsRow(source_row, source_parent)


# -- the chips --------------------------------------------------------------------------------


class LoraChip(QWidget):
    """One LoRA the prompt uses: its name, a weight slider, the weight, and a remove button."""

    weightChanged = Signal(str, float)
    removeRequested = Signal(str)

    def __init__(self, name: str, weight: float, missing: bool, parent: QWidget | None = None):
        super().__init__(parent)
        self.name = name
        self.label = QLabel(name)
        self.label.setMinimumWidth(60)
        if missing:
            self.label.setText(f"⚠ {name}")
            self.label.setToolTip(f"There is no LoRA called {name} in the library")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(round(WEIGHT_RANGE[0] / WEIGHT_STEP), round(WEIGHT_RANGE[1] / WEIGHT_STEP))
        self.slider.setAccessibleName(f"{name} weight")
        self.value = QLabel()
        self.value.setMinimumWidth(self.value.fontMetrics().horizontalAdvance("-0.00") + 4)
        self.remove = QToolButton(text="✕")
        self.remove.setToolTip(f"Take {name} out of the prompt")
        self.remove.setAutoRaise(True)
        self.set_weight(weight)
        self.slider.valueChanged.connect(self._moved)
        self.remove.clicked.connect(lambda: self.removeRequested.emit(self.name))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label, 2)
        layout.addWidget(self.slider, 3)
        layout.addWidget(self.value)
        layout.addWidget(self.remove)

    def set_weight(self, weight: float) -> None:
        """Show `weight` (from the text) without writing it back."""
        self.slider.blockSignals(True)
        self.slider.setValue(round(weight / WEIGHT_STEP))
        self.slider.blockSignals(False)
        self.value.setText(format_weight(weight))

    def weight(self) -> float:
        return self.slider.value() * WEIGHT_STEP

    def _moved(self, _: int) -> None:
        self.value.setText(format_weight(self.weight()))
        self.weightChanged.emit(self.name, self.weight())


# -- the panel --------------------------------------------------------------------------------


class LoraPanel(QWidget):
    """The panel over one prompt box. `set_library`, `set_family` and `refresh` keep it current."""

    def __init__(self, library: Path, prompt_edit: QPlainTextEdit, negative_edit: QPlainTextEdit | None = None,
                 parent: QWidget | None = None, allow_pickle: bool = False):
        super().__init__(parent)
        self.library = Library(library)
        self.allow_pickle = allow_pickle  # Settings > Allow pickle files
        self.prompt_edit = prompt_edit
        self.negative_edit = negative_edit  # where the context menu's "Add to Negative Prompt" writes
        self.cache = InfoCache()
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)  # header reading stays in the background, one file at a time
        self._signals = _ReadSignals(self)
        self._signals.read.connect(self._on_read)
        self._queued: set[tuple[str, bool]] = set()  # the tokens of the reads under way
        self._chips: dict[str, LoraChip] = {}

        self.search = QLineEdit()
        self.search.setPlaceholderText("Search names and trigger words")
        self.search.setClearButtonEnabled(True)
        self.search.setAccessibleName("Search LoRAs and embeddings")
        self.kind_combo = QComboBox()
        self.kind_combo.addItems(list(KIND_FILTERS))
        self.kind_combo.setAccessibleName("Show")
        self.model = ResourceListModel(self)
        self.proxy = ResourceFilter(self)
        self.proxy.setSourceModel(self.model)
        self.list = QListView()
        self.list.setModel(self.proxy)
        self.list.setIconSize(QSize(ICON_SIZE, ICON_SIZE))
        self.list.setUniformItemSizes(False)
        self.list.setSpacing(2)
        self.list.setWordWrap(True)
        self.list.setAccessibleName("LoRAs and embeddings")
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._context_menu)
        self.empty_label = QLabel()
        self.empty_label.setWordWrap(True)
        self.chips_title = QLabel("In the prompt")
        self.chips_box = QWidget()
        self.chips_layout = QVBoxLayout(self.chips_box)
        self.chips_layout.setContentsMargins(0, 0, 0, 0)
        self.chips_scroll = QScrollArea()
        self.chips_scroll.setWidget(self.chips_box)
        self.chips_scroll.setWidgetResizable(True)
        self.chips_scroll.setMaximumHeight(140)

        top = QHBoxLayout()
        top.addWidget(self.search, 1)
        top.addWidget(self.kind_combo)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.empty_label)
        layout.addWidget(self.chips_title)
        layout.addWidget(self.chips_scroll)

        self.search.textChanged.connect(self.proxy.setFilterFixedString)
        self.kind_combo.currentTextChanged.connect(lambda text: self.proxy.set_kinds(KIND_FILTERS[text]))
        self.list.clicked.connect(self._on_clicked)
        self.prompt_edit.textChanged.connect(self.update_chips)
        self.refresh()

    # -- the library ----------------------------------------------------------------------------

    def set_library(self, library: Path) -> None:
        self.library = Library(library)
        self.refresh()

    def set_allow_pickle(self, allowed: bool) -> None:
        """Read pickles (or stop reading them) from now on: their rows are read again."""
        if allowed != self.allow_pickle:
            self.allow_pickle = allowed
            self.refresh()

    def set_family(self, family: str | None) -> None:
        """The loaded model's family ("sd1", "sdxl", ...): items for another one are greyed."""
        self.model.set_family(family or None)

    def refresh(self) -> None:
        """List the folders again; files not read yet (or changed since) are read on the worker."""
        rows = []
        for kind in PANEL_KINDS:
            for item in self.library.items(kind):
                key = cache_key(item.path, self.allow_pickle)
                info = self.cache.get(key)
                if info is None:
                    info = ResourceInfo(kind, item.name, item.path, loaded=False)
                    read = _Read(str(item.path), key, self.allow_pickle)
                    if read.token not in self._queued:
                        self._queued.add(read.token)
                        self._pool.start(_ReadJob(item, read, self._signals))
                rows.append(info)
        self.model.set_rows(rows)
        empty = not rows
        self.empty_label.setVisible(empty)
        self.empty_label.setText(
            "No LoRAs or embeddings yet. Drop .safetensors files on the window, or put them in "
            f"{folder_hint(self.library)}" if empty else ""
        )
        self.update_chips()

    def wait(self) -> None:
        """Wait for the files being read (tests; closing)."""
        self._pool.waitForDone()

    @Slot(object, object, object)
    def _on_read(self, read: _Read, info: ResourceInfo, thumbnail: QImage | None) -> None:
        self._queued.discard(read.token)
        self.cache.put(read.key, info)
        if read.allow_pickle == self.allow_pickle or not is_pickle(info.path):  # else a read the new way is queued
            self.model.update_info(info, thumbnail)

    def showEvent(self, event: QShowEvent) -> None:
        self.refresh()  # files put in the folders meanwhile (by Finder, or a drop) show up
        super().showEvent(event)

    # -- the prompt -----------------------------------------------------------------------------

    def _on_clicked(self, index: QModelIndex) -> None:
        self.add_to(self.prompt_edit, index)

    def add_to(self, edit: QPlainTextEdit, index: QModelIndex) -> None:
        """Add the tag (or the embedding's name) of the row at `index` to the text of `edit`."""
        info: ResourceInfo | None = index.data(ResourceListModel.InfoRole)
        if info is None or info.unsuitable_for(self.model.family):
            return
        text = edit.toPlainText()
        self._set_text(edit, add_lora(text, info.name) if info.kind == "loras" else add_word(text, info.name))

    def _context_menu(self, position: QPoint) -> None:
        index = self.list.indexAt(position)
        if not index.isValid() or not index.flags() & Qt.ItemFlag.ItemIsEnabled:
            return
        menu = QMenu(self)
        menu.addAction("Add to Prompt", lambda: self.add_to(self.prompt_edit, index))
        if self.negative_edit is not None:
            negative = self.negative_edit
            menu.addAction("Add to Negative Prompt", lambda: self.add_to(negative, index))
        menu.exec(self.list.viewport().mapToGlobal(position))

    def _set_prompt(self, text: str) -> None:
        self._set_text(self.prompt_edit, text)

    @staticmethod
    def _set_text(edit: QPlainTextEdit, text: str) -> None:
        """Replace the text as one undoable edit (Ctrl+Z brings the old text back)."""
        if text == edit.toPlainText():
            return
        cursor = QTextCursor(edit.document())
        cursor.select(QTextCursor.SelectionType.Document)
        cursor.insertText(text)

    def update_chips(self) -> None:
        """One chip per LoRA the prompt uses; weights typed in the text move the sliders."""
        tags = {tag.name: tag for tag in prompt_loras(self.prompt_edit.toPlainText())}
        if list(tags) != list(self._chips):
            for chip in self._chips.values():
                chip.deleteLater()
            self._chips = {}
            known = self.model.names("loras")
            for name, tag in tags.items():
                chip = LoraChip(name, tag.unet_weight, name not in known)
                chip.weightChanged.connect(self._set_weight)
                chip.removeRequested.connect(self._remove)
                self.chips_layout.addWidget(chip)
                self._chips[name] = chip
        else:
            for name, tag in tags.items():
                if abs(self._chips[name].weight() - tag.unet_weight) > WEIGHT_STEP / 2:
                    self._chips[name].set_weight(tag.unet_weight)
        self.chips_title.setText("In the prompt" if tags else "In the prompt: no LoRA yet (click one above)")
        self.chips_scroll.setVisible(bool(tags))

    def chips(self) -> dict[str, LoraChip]:
        return dict(self._chips)

    def _set_weight(self, name: str, weight: float) -> None:
        self._set_prompt(set_lora_weight(self.prompt_edit.toPlainText(), name, weight))

    def _remove(self, name: str) -> None:
        self._set_prompt(remove_lora(self.prompt_edit.toPlainText(), name))


def install_lora_panel(window: MainWindow) -> LoraPanel:
    """The panel as a "LoRAs" tab of the main window, following its model, library and drops; a
    restored PNG names the LoRAs and embeddings it uses that the library lacks."""
    panel = LoraPanel(window.library, window.prompt_panel.prompt_edit, window.prompt_panel.negative_edit,
                      allow_pickle=window.settings.allow_pickle)
    window.settingsApplied.connect(lambda settings: panel.set_allow_pickle(settings.allow_pickle))
    window.add_panel("LoRAs", panel)
    window.picker.modelChanged.connect(lambda model: panel.set_family(model.family if model is not None else None))
    current = window.picker.current()
    panel.set_family(current.family if current is not None else None)
    window.resourcesChanged.connect(lambda kind: panel.refresh() if kind in PANEL_KINDS else None)
    window.restore_hooks.append(lambda _request, info: missing_resources(info, panel.library) if info else [])
    return panel
