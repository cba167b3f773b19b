"""The history as a Qt list model: one row per image of a `HistoryQuery`, newest first.

Rows are fetched lazily a page at a time (Qt for Python's fetchmore example): opening a history of
10,000 images reads one count and one page. Thumbnails are decoded only when a view asks for them,
and the decoded icons of the most recently shown rows are cached; a missing or undecodable thumbnail
shows a placeholder. A read that fails (HistoryError) keeps the rows as they were and is reported
through the `failed` signal, never raised into Qt.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QByteArray,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPixmap

from .history_store import HistoryEntry, HistoryError, HistoryQuery, HistoryStore

PAGE_SIZE = 120
ICON_CACHE_SIZE = 600
PLACEHOLDER_SIDE = 128
STAR = "\u2605"

Index = QModelIndex | QPersistentModelIndex


class HistoryRoles:
    ENTRY = Qt.ItemDataRole.UserRole + 1  # the HistoryEntry
    ID = Qt.ItemDataRole.UserRole + 2
    PROMPT = Qt.ItemDataRole.UserRole + 3
    NEGATIVE_PROMPT = Qt.ItemDataRole.UserRole + 4
    MODEL = Qt.ItemDataRole.UserRole + 5
    SEED = Qt.ItemDataRole.UserRole + 6
    SIZE = Qt.ItemDataRole.UserRole + 7  # "WxH"
    CREATED = Qt.ItemDataRole.UserRole + 8  # unix time
    PARAMS = Qt.ItemDataRole.UserRole + 9  # the recorded request as a dict
    INFOTEXT = Qt.ItemDataRole.UserRole + 10
    IMAGE_PATH = Qt.ItemDataRole.UserRole + 11  # absolute path as str
    FAVOURITE = Qt.ItemDataRole.UserRole + 12  # bool, editable


_ROLE_NAMES = {
    HistoryRoles.ENTRY: b"entry", HistoryRoles.ID: b"id", HistoryRoles.PROMPT: b"prompt",
    HistoryRoles.NEGATIVE_PROMPT: b"negativePrompt", HistoryRoles.MODEL: b"model", HistoryRoles.SEED: b"seed",
    HistoryRoles.SIZE: b"size", HistoryRoles.CREATED: b"created", HistoryRoles.PARAMS: b"params",
    HistoryRoles.INFOTEXT: b"infotext", HistoryRoles.IMAGE_PATH: b"imagePath", HistoryRoles.FAVOURITE: b"favourite",
}


def caption(entry: HistoryEntry) -> str:
    """The grid's one-line label: the prompt's first line, starred when a favourite."""
    first_line = entry.generation.prompt.strip().split("\n", 1)[0] or "(no prompt)"
    return f"{STAR} {first_line}" if entry.favourite else first_line


def tooltip(entry: HistoryEntry) -> str:
    g = entry.generation
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(g.created))
    return f"{g.prompt}\n\n{g.model} \u00b7 seed {g.seed} \u00b7 {g.width}x{g.height} \u00b7 {when}"


def placeholder_icon() -> QIcon:
    """What a row shows when its thumbnail is missing or cannot be decoded: a grey tile with a cross."""
    pixmap = QPixmap(PLACEHOLDER_SIDE, PLACEHOLDER_SIDE)
    pixmap.fill(QColor(128, 128, 128, 60))
    painter = QPainter(pixmap)
    painter.setPen(QColor(128, 128, 128))
    inset = PLACEHOLDER_SIDE // 3
    painter.drawLine(inset, inset, PLACEHOLDER_SIDE - inset, PLACEHOLDER_SIDE - inset)
    painter.drawLine(inset, PLACEHOLDER_SIDE - inset, PLACEHOLDER_SIDE - inset, inset)
    painter.end()
    return QIcon(pixmap)


class HistoryListModel(QAbstractListModel):
    """Rows of one query over a HistoryStore owned by the caller (used from the UI thread only).
    Without a store (the library cannot be opened, or is moving) the model is empty."""

    failed = Signal(str)  # a read of the history failed: the message to show

    def __init__(self, store: HistoryStore | None, page_size: int = PAGE_SIZE, parent: QObject | None = None):
        super().__init__(parent)
        self._store = store
        self._page_size = page_size
        self._query = HistoryQuery()
        self._entries: list[HistoryEntry] = []
        self._offset = 0  # rows read from the store: more than the entries when damaged rows were skipped
        self._stalled = False  # a page could not be read: fetch no more until the next reload
        self._total = self._count(self._query) or 0
        self._placeholder: QIcon | None = None
        self._icons: OrderedDict[int, QIcon] = OrderedDict()
        # True while rows are reset, inserted or removed: a view (or QAbstractItemModelTester) reacting
        # to those signals must not start another insertion before the change has finished
        self._changing = False

    # -- what the caller changes --------------------------------------------------------------

    @property
    def store(self) -> HistoryStore | None:
        return self._store

    @property
    def query(self) -> HistoryQuery:
        return self._query

    @property
    def total(self) -> int:
        """How many entries match the query (fetched or not)."""
        return self._total

    def set_store(self, store: HistoryStore | None) -> None:
        """Show another store (the library moved), or none; the query is kept."""
        self._store = store
        self.reload()

    def set_query(self, query: HistoryQuery) -> None:
        self._query = query
        self.reload()

    def reload(self) -> None:
        """Read the query afresh (after a new image, a search, a filter change)."""
        # counted before the reset: a failure leaves the rows as they were
        total = self._count(self._query)
        if total is None:
            return
        self._changing = True
        self.beginResetModel()
        self._entries = []
        self._offset = 0
        self._stalled = False
        self._total = total
        self._icons.clear()
        self.endResetModel()
        self._changing = False

    def models(self) -> list[str]:
        """The store's model names for the filter (none without a store, or when it cannot be read)."""
        if self._store is None:
            return []
        try:
            return self._store.models()
        except HistoryError as exc:
            self.failed.emit(str(exc))
            return []

    def _count(self, query: HistoryQuery) -> int | None:
        """The number of entries matching `query`; None (and `failed`) when the store cannot be read."""
        if self._store is None:
            return 0
        try:
            return self._store.count(query)
        except HistoryError as exc:
            self.failed.emit(str(exc))
            return None

    def entry(self, row: int) -> HistoryEntry:
        return self._entries[row]

    def row_of(self, entry_id: int) -> int | None:
        """The row of an entry among those fetched so far."""
        for row, entry in enumerate(self._entries):
            if entry.id == entry_id:
                return row
        return None

    def set_favourite(self, row: int, favourite: bool) -> None:
        entry = self._entries[row]
        assert self._store is not None  # rows exist only with a store
        self._store.set_favourite(entry.id, favourite)
        self._entries[row] = HistoryEntry(entry.id, entry.generation, entry.image_path, favourite)
        index = self.index(row)
        self.dataChanged.emit(index, index)
        if self._query.favourites_only and not favourite:
            self._remove_row(row)

    def delete(self, row: int) -> None:
        """Delete the entry's image and record (HistoryStore.delete), then drop its row."""
        assert self._store is not None  # rows exist only with a store
        self._store.delete(self._entries[row].id)
        self._remove_row(row)

    def _remove_row(self, row: int) -> None:
        self._changing = True
        self.beginRemoveRows(QModelIndex(), row, row)
        removed = self._entries.pop(row)
        self._icons.pop(removed.id, None)
        self._total -= 1
        self._offset -= 1
        self.endRemoveRows()
        self._changing = False

    # -- QAbstractListModel --------------------------------------------------------------------

    def rowCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._entries)

    def canFetchMore(self, parent: Index = QModelIndex()) -> bool:
        return not parent.isValid() and not self._changing and not self._stalled and self._offset < self._total

    def fetchMore(self, parent: Index = QModelIndex()) -> None:
        if not self.canFetchMore(parent) or self._store is None:
            return
        try:
            page = self._store.page(self._query, self._offset, self._page_size)
        except HistoryError as exc:
            self._stalled = True
            self.failed.emit(str(exc))
            return
        self._offset += self._page_size  # damaged rows the store skipped were read all the same
        if not page:  # entries were deleted behind our back (or all of this page is damaged)
            if self._offset >= self._total:
                self._total = len(self._entries)
            return
        first = len(self._entries)
        self._changing = True
        self.beginInsertRows(QModelIndex(), first, first + len(page) - 1)
        self._entries.extend(page)
        self.endInsertRows()
        self._changing = False

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not self._valid(index):
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemNeverHasChildren

    def roleNames(self) -> dict[int, QByteArray]:
        names = super().roleNames()
        names.update({role: QByteArray(name) for role, name in _ROLE_NAMES.items()})
        return names

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not self._valid(index):
            return None
        entry = self._entries[index.row()]
        g = entry.generation
        match role:
            case Qt.ItemDataRole.DisplayRole:
                return caption(entry)
            case Qt.ItemDataRole.DecorationRole:
                return self._icon(entry.id)
            case Qt.ItemDataRole.ToolTipRole:
                return tooltip(entry)
            case HistoryRoles.ENTRY:
                return entry
            case HistoryRoles.ID:
                return entry.id
            case HistoryRoles.PROMPT:
                return g.prompt
            case HistoryRoles.NEGATIVE_PROMPT:
                return g.negative_prompt
            case HistoryRoles.MODEL:
                return g.model
            case HistoryRoles.SEED:
                return g.seed
            case HistoryRoles.SIZE:
                return f"{g.width}x{g.height}"
            case HistoryRoles.CREATED:
                return g.created
            case HistoryRoles.PARAMS:
                return g.params
            case HistoryRoles.INFOTEXT:
                return g.infotext
            case HistoryRoles.IMAGE_PATH:
                return str(entry.image_path)
            case HistoryRoles.FAVOURITE:
                return entry.favourite
        return None

    def setData(self, index: Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if role != HistoryRoles.FAVOURITE or not self._valid(index):
            return False
        self.set_favourite(index.row(), bool(value))
        return True

    def _valid(self, index: Index) -> bool:
        return index.isValid() and not index.parent().isValid() and 0 <= index.row() < len(self._entries)

    def _icon(self, entry_id: int) -> QIcon:
        icon = self._icons.get(entry_id)
        if icon is None:
            try:
                data = self._store.thumbnail(entry_id) if self._store is not None else None
            except HistoryError:
                data = None  # a damaged row: its placeholder says as much as an error would, once per row
            image = QImage.fromData(data) if data else QImage()
            icon = QIcon(QPixmap.fromImage(image)) if not image.isNull() else self._placeholder_icon()
            self._icons[entry_id] = icon
            if len(self._icons) > ICON_CACHE_SIZE:
                self._icons.popitem(last=False)
        else:
            self._icons.move_to_end(entry_id)
        return icon

    def _placeholder_icon(self) -> QIcon:
        if self._placeholder is None:
            self._placeholder = placeholder_icon()
        return self._placeholder
