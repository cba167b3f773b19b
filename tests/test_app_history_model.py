"""HistoryListModel: lazy paging over the Qt-free store, roles, thumbnails, favourites, deletes."""

import pytest
from PIL import Image
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QListView

from app.history_model import STAR, HistoryListModel, HistoryRoles
from app.history_record import request_params
from app.history_store import Generation, HistoryQuery, HistoryStore
from mlx_sd.infotext import format_infotext
from mlx_sd.request import GenerationRequest

pytestmark = pytest.mark.qt_log_level_fail("WARNING")


def record(store, prompt, seed, model="demo", created=0.0, colour=(200, 40, 40), **fields):
    request = GenerationRequest(prompt=prompt, negative_prompt="blurry", seed=seed, width=64, height=64, **fields)
    params = request_params(request)  # the record the app and server write
    generation = Generation(prompt, "blurry", model, seed, 64, 64, params, format_infotext(request, seed), created)
    return store.add(Image.new("RGB", (64, 48), colour), generation)


@pytest.fixture
def store(tmp_path, qapp):  # thumbnails become QPixmaps: a QApplication must exist
    s = HistoryStore(tmp_path / "library")
    yield s
    s.close()


def fill(store, n, start=1_700_000_000.0):
    return [record(store, f"prompt number {i} {'castle' if i % 3 == 0 else 'river'}", i,
                   model="sdxl" if i % 2 else "demo", created=start + i) for i in range(n)]


def test_qtmodeltester(qtmodeltester, store):
    fill(store, 12)
    model = HistoryListModel(store, page_size=5)
    qtmodeltester.check(model)
    model.set_query(HistoryQuery(text="castle"))
    qtmodeltester.check(model)
    model.fetchMore()
    model.setData(model.index(0), True, HistoryRoles.FAVOURITE)
    model.set_query(HistoryQuery(favourites_only=True))
    qtmodeltester.check(model)
    model.fetchMore()
    model.set_favourite(0, False)  # leaves the favourites-only rows
    model.set_query(HistoryQuery())
    model.fetchMore()
    model.delete(1)
    qtmodeltester.check(model)


def test_fetches_lazily_in_pages_newest_first(store):
    fill(store, 23)
    model = HistoryListModel(store, page_size=7)
    assert model.total == 23 and model.rowCount() == 0 and model.canFetchMore()
    sizes = []
    while model.canFetchMore():
        model.fetchMore()
        sizes.append(model.rowCount())
    assert sizes == [7, 14, 21, 23]
    seeds = [model.index(r).data(HistoryRoles.SEED) for r in range(model.rowCount())]
    assert seeds == list(range(22, -1, -1))
    assert model.row_of(model.entry(5).id) == 5


def test_roles(store):
    entry = record(store, "a red circle\non two lines", 42, model="sd15", steps=12, cfg_scale=6.5)
    model = HistoryListModel(store)
    model.fetchMore()
    index = model.index(0)
    assert index.data(Qt.ItemDataRole.DisplayRole) == "a red circle"
    assert "seed 42" in index.data(Qt.ItemDataRole.ToolTipRole)
    icon = index.data(Qt.ItemDataRole.DecorationRole)
    assert isinstance(icon, QIcon) and not icon.isNull()
    assert icon.availableSizes()[0].width() == 64  # the stored thumbnail, decoded
    assert index.data(HistoryRoles.ENTRY) == entry
    assert index.data(HistoryRoles.ID) == entry.id
    assert index.data(HistoryRoles.PROMPT) == "a red circle\non two lines"
    assert index.data(HistoryRoles.NEGATIVE_PROMPT) == "blurry"
    assert index.data(HistoryRoles.MODEL) == "sd15"
    assert index.data(HistoryRoles.SIZE) == "64x64"
    assert index.data(HistoryRoles.PARAMS)["steps"] == 12
    assert "CFG scale: 6.5" in index.data(HistoryRoles.INFOTEXT)
    assert index.data(HistoryRoles.IMAGE_PATH) == str(entry.image_path)
    assert index.data(HistoryRoles.FAVOURITE) is False
    assert index.data(HistoryRoles.CREATED) == entry.generation.created
    assert bytes(model.roleNames()[HistoryRoles.IMAGE_PATH]) == b"imagePath"
    assert model.data(model.index(5)) is None


def test_search_and_filters_reset_the_rows(store):
    fill(store, 12)
    model = HistoryListModel(store)
    resets = []
    model.modelReset.connect(lambda: resets.append(model.total))
    model.set_query(HistoryQuery(text="castle"))
    model.set_query(HistoryQuery(model="sdxl"))
    model.set_query(HistoryQuery(text="castle", model="sdxl"))
    assert resets == [4, 6, 2]
    model.fetchMore()
    assert {model.index(r).data(HistoryRoles.SEED) for r in range(2)} == {3, 9}


def test_favourite_and_favourites_only(store):
    fill(store, 3)
    model = HistoryListModel(store)
    model.fetchMore()
    changed = []
    model.dataChanged.connect(lambda a, b: changed.append(a.row()))
    assert model.setData(model.index(1), True, HistoryRoles.FAVOURITE)
    assert not model.setData(model.index(1), "x", Qt.ItemDataRole.DisplayRole)
    assert changed == [1]
    assert model.index(1).data() == f"{STAR} prompt number 1 river"
    assert store.get(model.entry(1).id).favourite
    model.set_query(HistoryQuery(favourites_only=True))
    model.fetchMore()
    assert model.rowCount() == 1
    model.set_favourite(0, False)  # no longer matches the query: its row goes
    assert model.rowCount() == 0 and model.total == 0


def test_delete_removes_file_record_and_row(store):
    entries = fill(store, 4)
    model = HistoryListModel(store, page_size=2)
    model.fetchMore()
    removed = []
    model.rowsRemoved.connect(lambda parent, first, last: removed.append((first, last)))
    doomed = model.entry(1)
    model.delete(1)
    assert removed == [(1, 1)]
    assert not doomed.image_path.exists() and store.get(doomed.id) is None
    assert model.total == 3 and model.rowCount() == 1
    model.fetchMore()  # paging continues after the delete without skipping or repeating
    assert [model.entry(r).generation.seed for r in range(model.rowCount())] == [3, 1, 0]
    assert entries[2].id == doomed.id


def test_entries_deleted_behind_the_model_stop_the_fetching(store):
    fill(store, 3)
    model = HistoryListModel(store)
    for entry in store.page(HistoryQuery(), 0, 10):
        store.delete(entry.id)
    model.fetchMore()
    assert model.rowCount() == 0 and not model.canFetchMore()


def test_a_view_fetches_more_as_it_scrolls(qtbot, store):
    fill(store, 60)
    model = HistoryListModel(store, page_size=10)
    view = QListView()
    view.setViewMode(QListView.ViewMode.IconMode)
    view.setUniformItemSizes(True)
    view.setModel(model)
    view.resize(300, 200)
    qtbot.addWidget(view)
    view.show()
    qtbot.waitExposed(view)
    model.fetchMore()
    first = model.rowCount()
    assert first < 60
    for _ in range(20):
        view.scrollToBottom()
        view.verticalScrollBar().setValue(view.verticalScrollBar().maximum())
        qtbot.wait(10)
    assert model.rowCount() == 60
    assert not model.canFetchMore(QModelIndex())


def test_a_store_that_cannot_be_read_is_reported_and_the_rows_stay(qtbot, store):
    fill(store, 6)
    model = HistoryListModel(store, page_size=4)
    model.fetchMore()
    store.close()  # every read now fails inside SQLite
    with qtbot.waitSignal(model.failed) as failed:
        model.reload()
    assert "cannot read the history" in failed.args[0]
    assert model.rowCount() == 4 and model.total == 6
    with qtbot.waitSignal(model.failed):
        model.fetchMore()
    assert model.rowCount() == 4 and model.total == 6 and not model.canFetchMore()
    with qtbot.waitSignal(model.failed):
        assert model.models() == []
    assert not model.data(model.index(0), Qt.ItemDataRole.DecorationRole).isNull()  # cached or placeholder


def test_rows_the_store_skips_as_damaged_neither_repeat_nor_stop_the_paging(store):
    entries = fill(store, 23)
    outside, bad_json = {e.id for e in entries[::4]}, {e.id for e in entries[1::5]}
    store._db.executemany("UPDATE generations SET image_path = '/elsewhere/x.png' || id WHERE id = ?",
                          [(i,) for i in outside])  # skipped by the store in Python
    store._db.executemany("UPDATE generations SET params = '{oops' WHERE id = ?", [(i,) for i in bad_json])  # in SQL
    damaged = outside | bad_json
    model = HistoryListModel(store, page_size=5)
    while model.canFetchMore():
        model.fetchMore()
    shown = [model.entry(row).id for row in range(model.rowCount())]
    assert len(shown) == len(set(shown)) == 23 - len(damaged)
    assert set(shown) == {e.id for e in entries} - damaged


@pytest.mark.qt_log_ignore("Corrupt JPEG data", "JPEG datastream contains no image")  # Qt's decoder on the bad bytes
def test_a_missing_or_undecodable_thumbnail_shows_a_placeholder(store):
    first, second = fill(store, 2)
    store._db.execute("UPDATE generations SET thumbnail = x'ffd8ff00' WHERE id = ?", (first.id,))
    store._db.execute("UPDATE generations SET thumbnail = 'not an image' WHERE id = ?", (second.id,))
    model = HistoryListModel(store)
    model.fetchMore()
    for row in range(2):
        icon = model.data(model.index(row), Qt.ItemDataRole.DecorationRole)
        assert isinstance(icon, QIcon) and not icon.isNull()
