"""The Qt-free history store: durability, reconciliation after crashes, search and filters."""

import errno
import os
import sqlite3
import subprocess

import pytest
from PIL import Image

from app import history_store
from app.history_store import Generation, HistoryError, HistoryQuery, HistoryStore, move_library


def make_generation(prompt: str = "a red circle", seed: int = 1, model: str = "demo", created: float = 0.0):
    return Generation(
        prompt=prompt, negative_prompt="blurry", model=model, seed=seed, width=64, height=64,
        params={"prompt": prompt, "steps": 20, "seed": seed}, infotext=f"{prompt}\nSteps: 20, Seed: {seed}",
        created=created,
    )


def image(colour=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (64, 64), colour)


def dead_pid() -> int:
    """The pid of a process that has ended: the owner of what a crashed add left behind."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture
def store(tmp_path):
    s = HistoryStore(tmp_path / "library")
    yield s
    s.close()


def test_add_writes_the_png_with_metadata_then_the_row(store):
    entry = store.add(image(), make_generation())
    assert entry.image_path.is_file()
    with Image.open(entry.image_path) as png:
        assert png.text["parameters"] == "a red circle\nSteps: 20, Seed: 1"
        assert png.getpixel((0, 0)) == (200, 30, 30)
    again = store.get(entry.id)
    assert again == entry
    assert store.count() == 1
    assert Image.open(__import__("io").BytesIO(store.thumbnail(entry.id))).size == (64, 64)


def test_database_is_in_wal_mode(store):
    mode = sqlite3.connect(store.library / history_store.DB_NAME).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_full_text_search_matches_word_prefixes_in_any_order(store):
    store.add(image(), make_generation("a red circle on a blue background"))
    store.add(image(), make_generation("small green star, white background"))
    store.add(image(), make_generation('quote "tricky" (weights:1.2)'))
    assert store.count(HistoryQuery(text="circ")) == 1
    assert store.count(HistoryQuery(text="background")) == 2
    assert store.count(HistoryQuery(text="white star")) == 1
    assert store.count(HistoryQuery(text='"tricky')) == 1
    assert store.count(HistoryQuery(text="blurry")) == 3  # negative prompts are searched too
    assert store.count(HistoryQuery(text="nothing-like-this")) == 0


def test_filters_by_model_date_and_favourite(store):
    a = store.add(image(), make_generation(model="demo", created=1000.0))
    store.add(image(), make_generation(model="sdxl", created=2000.0))
    store.add(image(), make_generation(model="demo", created=3000.0))
    store.set_favourite(a.id, True)
    assert store.models() == ["demo", "sdxl"]
    assert store.count(HistoryQuery(model="demo")) == 2
    assert store.count(HistoryQuery(since=1500.0, until=3000.0)) == 1
    assert [e.id for e in store.page(HistoryQuery(favourites_only=True), 0, 10)] == [a.id]
    newest_first = [e.generation.created for e in store.page(HistoryQuery(), 0, 10)]
    assert newest_first == [3000.0, 2000.0, 1000.0]
    assert [e.generation.created for e in store.page(HistoryQuery(), 1, 1)] == [2000.0]


def test_delete_removes_the_file_and_the_row(store):
    entry = store.add(image(), make_generation())
    store.delete(entry.id)
    assert not entry.image_path.exists()
    assert store.get(entry.id) is None
    assert store.count(HistoryQuery(text="circle")) == 0
    assert not any((store.library / history_store.TRASH_DIR).iterdir())


def test_image_written_but_row_not_committed_is_recovered_on_open(tmp_path, monkeypatch):
    library = tmp_path / "lib"
    store = HistoryStore(library)

    def crash(*args):
        raise KeyboardInterrupt  # the process dies between the image write and the commit

    monkeypatch.setattr(store, "_insert", crash)
    monkeypatch.setattr(history_store.Path, "unlink", lambda self, missing_ok=False: None)  # no clean-up runs
    monkeypatch.setattr(history_store.os, "getpid", dead_pid)  # the marker's owner is gone when we reopen
    with pytest.raises(KeyboardInterrupt):
        store.add(image(), make_generation("survives a crash", seed=42))
    monkeypatch.undo()
    [written] = list(store._image_files())
    assert store.count() == 0 and list((library / history_store.PENDING_DIR).iterdir())
    store.close()
    reopened = HistoryStore(library)
    [recovered] = reopened.page(HistoryQuery(text="crash"), 0, 10)
    assert recovered.image_path == written
    assert not list((library / history_store.PENDING_DIR).iterdir())
    assert recovered.generation.seed == 42
    assert recovered.generation.params == {"prompt": "survives a crash", "steps": 20, "seed": 42}
    reopened.close()


def test_crash_before_the_image_was_complete_leaves_nothing(tmp_path, monkeypatch):
    library = tmp_path / "lib"
    store = HistoryStore(library)
    real_write = history_store.write_durably

    def die_writing_the_png(path, data):
        if path.suffix == ".png":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_name(f".{path.name}.partial").write_bytes(data[:100])  # half a temp file
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(history_store, "write_durably", die_writing_the_png)
    monkeypatch.setattr(history_store.Path, "unlink", lambda self, missing_ok=False: None)
    monkeypatch.setattr(history_store.os, "getpid", dead_pid)
    with pytest.raises(KeyboardInterrupt):
        store.add(image(), make_generation())
    monkeypatch.undo()
    store.close()
    reopened = HistoryStore(library)
    assert reopened.count() == 0
    leftovers = [p for p in library.rglob("*") if p.is_file() and not p.name.startswith(history_store.DB_NAME)]
    assert leftovers == []
    reopened.close()


def test_full_reconcile_drops_rows_whose_image_vanished_and_adopts_lost_pngs(tmp_path):
    library = tmp_path / "lib"
    store = HistoryStore(library)
    gone = store.add(image(), make_generation("deleted behind our back"))
    lost = store.add(image(), make_generation("row lost"))
    store._db.execute("DELETE FROM generations WHERE id = ?", (lost.id,))
    gone.image_path.unlink()
    store.reconcile_all()
    assert store.get(gone.id) is None
    [adopted] = store.page(HistoryQuery(text="lost"), 0, 5)
    assert adopted.image_path == lost.image_path
    store.close()


def test_crash_in_the_middle_of_a_delete_is_undone(tmp_path):
    library = tmp_path / "lib"
    store = HistoryStore(library)
    entry = store.add(image(), make_generation())
    trash = library / history_store.TRASH_DIR
    trash.mkdir()
    trashed = trash / f"{entry.id}.{os.getpid()}-{entry.image_path.name}"
    os.replace(entry.image_path, trashed)  # moved, not yet committed: the delete is running
    other = HistoryStore(library)  # e.g. the browser's store while the worker's deletes
    assert trashed.is_file() and not entry.image_path.exists()  # left to the running delete
    other.close()
    store.close()
    os.replace(trashed, trash / f"{entry.id}.{dead_pid()}-{entry.image_path.name}")  # ...whose process died
    reopened = HistoryStore(library)
    assert reopened.get(entry.id) is not None and entry.image_path.is_file()
    assert not any(trash.iterdir())
    reopened.close()


def test_a_full_disk_records_nothing_and_leaves_no_file(store, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(history_store.os, "fsync", no_space)
    with pytest.raises(HistoryError, match="No space left"):
        store.add(image(), make_generation())
    monkeypatch.undo()
    assert store.count() == 0
    leftovers = [p for p in store.library.rglob("*") if p.is_file() and not p.name.startswith(history_store.DB_NAME)]
    assert leftovers == []


def test_failed_commit_removes_the_written_image(store, monkeypatch):
    def broken_insert(*args):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "_insert", broken_insert)
    with pytest.raises(HistoryError, match="disk is full"):
        store.add(image(), make_generation())
    assert list(store._image_files()) == []


def test_moving_the_library_keeps_the_history(tmp_path):
    store = HistoryStore(tmp_path / "old")
    store.add(image(), make_generation("moved along"))
    store.close()
    moved = move_library(tmp_path / "old", tmp_path / "elsewhere" / "new")
    reopened = HistoryStore(moved)
    [entry] = reopened.page(HistoryQuery(text="moved"), 0, 5)
    assert entry.image_path.is_file() and entry.image_path.is_relative_to(moved)
    reopened.close()


def test_moving_onto_a_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(HistoryError, match="not empty"):
        move_library(tmp_path / "old", tmp_path / "busy")


def test_foreign_png_in_the_images_folder_is_left_alone(tmp_path):
    library = tmp_path / "lib"
    (library / "images").mkdir(parents=True)
    image().save(library / "images" / "someone-elses.png")
    store = HistoryStore(library)
    store.reconcile_all()
    assert store.count() == 0
    assert (library / "images" / "someone-elses.png").exists()
    store.close()
