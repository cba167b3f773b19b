"""The history against hostile files: damaged pages, bad row JSON, a broken full-text index, another
program's database, pending markers naming paths outside the library, files that are not databases.
Each test builds its own hostile input; none may end in anything but a result or a HistoryError."""

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from app import history_database, history_store
from app.history_store import Generation, HistoryError, HistoryQuery, HistoryStore
from test_history_store import dead_pid

ROWS = 40


def generation(i: int) -> Generation:
    return Generation(
        prompt=f"prompt number {i} of a red circle", negative_prompt="blurry", model="demo", seed=i, width=32,
        height=32, params={"seed": i, "steps": 4}, infotext=f"prompt {i}\nSteps: 4, Seed: {i}", created=1000.0 + i,
    )


def filled_library(folder: Path, rows: int = ROWS) -> Path:
    store = HistoryStore(folder)
    for i in range(rows):
        store.add(Image.new("RGB", (32, 32), (i * 5 % 255, 80, 120)), generation(i))
    store.close()  # folds the WAL back into the file
    return folder


def db_file(library: Path) -> Path:
    return library / history_store.DB_NAME


def damaged_copies(library: Path) -> list[Path]:
    return sorted(library.glob("history.damaged-*.sqlite3"))


def read_everything(store: HistoryStore) -> list:
    """Every read the app makes; only HistoryError may come out."""
    results = []
    for call in (
        lambda: store.count(),
        lambda: store.page(HistoryQuery(), 0, 1000),
        lambda: store.page(HistoryQuery(text="circle"), 0, 1000),
        lambda: store.count(HistoryQuery(text="number 3", model="demo", since=0.0, favourites_only=False)),
        lambda: store.models(),
        lambda: store.get(1),
        lambda: store.thumbnail(1),
        lambda: store.damaged_rows(),
    ):
        try:
            results.append(call())
        except HistoryError as exc:
            assert "\n" not in str(exc)
            results.append(exc)
    return results


def root_page(path: Path, table: str) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    db.close()
    return root, page_size


# -- damaged files ---------------------------------------------------------------------------


def test_a_damaged_page_moves_the_file_aside_intact_and_the_images_refill_a_fresh_history(tmp_path):
    library = filled_library(tmp_path / "lib")
    root, page_size = root_page(db_file(library), "generations")
    data = bytearray(db_file(library).read_bytes())
    data[(root - 1) * page_size:root * page_size] = b"\xa5" * page_size  # the table's root page
    db_file(library).write_bytes(bytes(data))

    store = HistoryStore(library)
    [aside] = damaged_copies(library)
    assert aside.read_bytes() == bytes(data)  # moved, byte for byte, never rewritten
    assert str(aside) in store.notice and "damaged" in store.notice and "\n" not in store.notice
    assert store.count() == 0
    store.reconcile_all()  # the images carry their records
    assert store.count() == ROWS and store.count(HistoryQuery(text="number 7")) == 1
    store.close()
    again = HistoryStore(library)
    assert again.notice is None  # told once
    again.close()


@pytest.mark.parametrize("where", [0.3, 0.5, 0.7, 0.9])
def test_bytes_overwritten_in_the_middle_of_the_file_never_raise_raw_errors(tmp_path, where):
    library = filled_library(tmp_path / "lib")
    data = bytearray(db_file(library).read_bytes())
    start = int(len(data) * where)
    data[start:start + 3000] = random.Random(start).randbytes(3000)
    db_file(library).write_bytes(bytes(data))

    store = HistoryStore(library)
    read_everything(store)
    if store.notice is not None:
        [aside] = damaged_copies(library)
        assert aside.read_bytes() == bytes(data)
    store.close()


@pytest.mark.parametrize(
    "content",
    [os.urandom(10_000), b"SQLite format 3\x00" + os.urandom(5000), b"not a database at all\n" * 100],
    ids=["random bytes", "random bytes after the magic", "text"],
)
def test_a_file_that_is_not_a_database_is_moved_aside_intact(tmp_path, content):
    library = tmp_path / "lib"
    library.mkdir()
    db_file(library).write_bytes(content)
    store = HistoryStore(library)
    [aside] = damaged_copies(library)
    assert aside.read_bytes() == content
    assert str(aside) in store.notice
    store.add(Image.new("RGB", (8, 8)), generation(1))
    assert store.count() == 1
    store.close()


def test_a_truncated_database_is_moved_aside_or_read_never_raising(tmp_path):
    library = filled_library(tmp_path / "lib")
    data = db_file(library).read_bytes()
    db_file(library).write_bytes(data[: len(data) // 2])
    store = HistoryStore(library)
    read_everything(store)
    if store.notice is not None:
        [aside] = damaged_copies(library)
        assert aside.read_bytes() == data[: len(data) // 2]
    store.close()


def test_a_zero_byte_file_becomes_an_empty_history(tmp_path):
    library = tmp_path / "lib"
    library.mkdir()
    db_file(library).touch()
    store = HistoryStore(library)
    assert store.notice is None and store.count() == 0
    store.close()


def test_a_folder_in_place_of_the_database_is_a_clear_error(tmp_path):
    library = tmp_path / "lib"
    (db_file(library) / "something").mkdir(parents=True)
    with pytest.raises(HistoryError, match="not a database file") as raised:
        HistoryStore(library)
    assert str(db_file(library)) in str(raised.value) and "\n" not in str(raised.value)
    assert (db_file(library) / "something").is_dir()


# -- rows and the full-text index ------------------------------------------------------------


def test_rows_with_damaged_json_or_columns_are_skipped_and_counted(tmp_path):
    library = filled_library(tmp_path / "lib", rows=6)
    with sqlite3.connect(db_file(library)) as db:
        db.execute("UPDATE generations SET params = '{not json' WHERE seed = 1")
        db.execute("UPDATE generations SET params = '[1, 2]' WHERE seed = 2")
        db.execute("UPDATE generations SET seed = 'abc' WHERE seed = 3")
        db.execute("UPDATE generations SET image_path = '/etc/passwd' WHERE seed = 4")
        db.execute("UPDATE generations SET created = 1e300 WHERE seed = 5")
    db.close()
    store = HistoryStore(library)
    entries = store.page(HistoryQuery(), 0, 100)
    assert [e.generation.seed for e in entries] == [0]
    assert store.count() == 6  # counted, but not shown
    assert store.damaged_rows() == 3  # seen in SQL
    assert store.skipped_rows == 2  # an absolute path or an impossible time is only seen in Python
    assert store.get(2) is None  # seed 1's row: damaged JSON
    store.delete(5)  # the row naming /etc/passwd is never an entry, so nothing outside is touched
    assert Path("/etc/passwd").exists()
    store.close()


def test_a_full_text_index_broken_while_closed_is_rebuilt_at_open(tmp_path):
    library = filled_library(tmp_path / "lib")
    with sqlite3.connect(db_file(library)) as db:
        db.execute("DELETE FROM generations_fts_data WHERE id > 10")
    db.close()
    store = HistoryStore(library)
    assert store.notice is None
    assert store.count(HistoryQuery(text="number 12")) == 1
    store.close()


def test_a_full_text_index_broken_while_open_is_rebuilt_on_the_next_search(tmp_path):
    store = HistoryStore(filled_library(tmp_path / "lib"))
    with sqlite3.connect(db_file(store.library)) as other:
        other.execute("DELETE FROM generations_fts_data WHERE id > 10")
    other.close()
    assert store.count(HistoryQuery(text="number 12")) == 1
    assert [e.generation.seed for e in store.page(HistoryQuery(text="number 12"), 0, 10)] == [12]
    store.close()


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_ROW_PARAMS = st.one_of(
    st.text(max_size=200),
    _JSON_VALUES.map(json.dumps),
    _JSON_VALUES.map(json.dumps).map(lambda text: text[: len(text) // 2]),
    st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 3000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
    st.binary(max_size=50),
)


def test_fuzzed_row_json_gives_entries_or_skips_never_errors(tmp_path):
    store = HistoryStore(tmp_path / "lib")
    store.add(Image.new("RGB", (4, 4)), generation(1))

    @settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(params=_ROW_PARAMS)
    def reads_of_a_row_holding(params):
        store._db.execute("UPDATE generations SET params = ?", (params,))
        started = time.monotonic()
        read_everything(store)
        skipped_before = store.skipped_rows
        entries = store.page(HistoryQuery(), 0, 10)
        assert time.monotonic() - started < 0.25  # per input
        assert all(isinstance(e.generation.params, dict) for e in entries)
        assert len(entries) + store.skipped_rows - skipped_before + store.damaged_rows() == store.count() == 1

    try:
        reads_of_a_row_holding()
    finally:
        store.close()


# -- whose database it is ---------------------------------------------------------------------


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_another_programs_database_is_refused_and_left_untouched(tmp_path, journal):
    library = tmp_path / "lib"
    library.mkdir()
    with sqlite3.connect(db_file(library)) as db:
        db.execute(f"PRAGMA journal_mode={journal}")
        db.execute("CREATE TABLE accounts (name TEXT, balance REAL)")
        db.execute("INSERT INTO accounts VALUES ('alice', 10.5)")
    db.close()
    before = db_file(library).read_bytes()
    with pytest.raises(HistoryError, match="another program's database") as raised:
        HistoryStore(library)
    message = str(raised.value)
    assert str(db_file(library)) in message and "accounts" in message and "\n" not in message
    assert db_file(library).read_bytes() == before
    assert sorted(p.name for p in library.iterdir()) == [history_store.DB_NAME]


def test_a_database_marked_by_another_program_is_refused_even_when_empty(tmp_path):
    library = tmp_path / "lib"
    library.mkdir()
    with sqlite3.connect(db_file(library)) as db:
        db.execute("PRAGMA application_id = 1234")
    db.close()
    with pytest.raises(HistoryError, match="another program's database"):
        HistoryStore(library)


def test_a_history_made_before_the_mark_is_adopted_and_marked(tmp_path):
    library = tmp_path / "lib"
    library.mkdir()
    with sqlite3.connect(db_file(library)) as db:
        db.executescript(history_database.SCHEMA)
        db.execute(
            "INSERT INTO generations (created, prompt, negative_prompt, model, seed, width, height, params,"
            " infotext, image_path, thumbnail) VALUES (1, 'old prompt', '', 'demo', 7, 8, 8, '{}', '',"
            " 'images/2020-01-01/old.png', x'')"
        )
    db.close()
    store = HistoryStore(library)
    assert store.notice is None and store.count(HistoryQuery(text="old")) == 1
    store.close()
    with sqlite3.connect(db_file(library)) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == history_database.APPLICATION_ID
        assert db.execute("PRAGMA user_version").fetchone()[0] == history_database.SCHEMA_VERSION
    db.close()


# -- pending markers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        json.dumps("/etc/passwd"),
        json.dumps({"image": "/tmp/outside.png"}),
        json.dumps({"image": "images/../../outside.png"}),
        json.dumps({"image": "../outside.png"}),
        json.dumps({"image": ["images", "a.png"]}),
        json.dumps({"image": "images/a.png\x00.png"}),
        json.dumps({"image": "images/a.png"}),  # names nothing there: just removed
        '"' + "[" * 5000,
        "\x00\xff garbage",
    ],
)
def test_pending_markers_naming_anything_outside_the_images_folder_are_ignored_and_removed(tmp_path, content):
    library = tmp_path / "lib"
    outside = tmp_path / "outside.png"
    Image.new("RGB", (4, 4)).save(outside)
    pending = library / history_store.PENDING_DIR
    pending.mkdir(parents=True)
    marker = pending / "hostile.json"
    marker.write_text(content, encoding="utf-8", errors="surrogateescape")
    old = time.time() - 2 * history_store.STALE_SECONDS
    os.utime(marker, (old, old))
    store = HistoryStore(library)
    assert not marker.exists() and outside.is_file() and store.count() == 0
    store.close()


def test_stale_temp_files_of_markers_are_removed_and_fresh_ones_kept(tmp_path):
    library = tmp_path / "lib"
    pending = library / history_store.PENDING_DIR
    pending.mkdir(parents=True)
    stale, fresh = pending / ".a.json.x1.partial", pending / ".b.json.x2.partial"
    ours, dead_writers = pending / f".c.{os.getpid()}.json.x3.partial", pending / f".d.{dead_pid()}.json.x4.partial"
    for file in (stale, fresh, ours, dead_writers):
        file.write_bytes(b'{"ima')
    old = time.time() - 2 * history_store.STALE_SECONDS
    os.utime(stale, (old, old))
    HistoryStore(library).close()
    assert not stale.exists() and not dead_writers.exists()
    assert fresh.exists() and ours.exists()  # written since this process started, by no known writer or by it


def test_a_marker_whose_writer_is_alive_is_left_to_it_and_finished_once_it_is_gone(tmp_path, monkeypatch):
    library = tmp_path / "lib"
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store = HistoryStore(library)

        def crash(*args):
            raise KeyboardInterrupt

        monkeypatch.setattr(store, "_insert", crash)
        monkeypatch.setattr(history_store.Path, "unlink", lambda self, missing_ok=False: None)
        monkeypatch.setattr(history_store.os, "getpid", lambda: writer.pid)
        with pytest.raises(KeyboardInterrupt):  # the writer is between its image and its row
            store.add(Image.new("RGB", (8, 8)), generation(3))
        monkeypatch.undo()
        other = HistoryStore(library)
        assert other.count() == 0 and list((library / history_store.PENDING_DIR).glob("*.json"))
        other.close()
    finally:
        writer.kill()
        writer.wait()
    reopened = HistoryStore(library)
    assert reopened.count() == 1 and not list((library / history_store.PENDING_DIR).iterdir())
    reopened.close()
    store.close()


# -- writes that fail ---------------------------------------------------------------------------


def test_a_read_only_database_is_a_clear_error_and_nothing_recorded_is_lost(tmp_path):
    store = HistoryStore(filled_library(tmp_path / "lib", rows=3))
    images = sorted(store._image_files())
    store._db.execute("PRAGMA query_only = ON")  # SQLite now refuses writes, as on a read-only folder
    with pytest.raises(HistoryError, match="read-only"):
        store.add(Image.new("RGB", (8, 8)), generation(9))
    with pytest.raises(HistoryError, match="read-only"):
        store.set_favourite(1, True)
    with pytest.raises(HistoryError, match="read-only"):
        store.delete(1)
    assert sorted(store._image_files()) == images and store.count() == 3
    store.close()


# -- kill -9 ------------------------------------------------------------------------------------

_WRITER = """
import sys
from PIL import Image
from app.history_store import Generation, HistoryStore

store = HistoryStore(sys.argv[1])
for i in range(10_000):
    store.add(Image.new("RGB", (32, 32)), Generation(f"killed {i}", "", "demo", i, 32, 32, {}, ""))
    print(i, flush=True)
"""


def test_kill_9_while_adding_leaves_a_whole_history_with_every_image(tmp_path):
    library = tmp_path / "lib"
    for round_, adds in enumerate((3, 7, 12)):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(library)], stdout=subprocess.PIPE, text=True,
                                  cwd=Path(__file__).parents[1])
        for _ in range(adds):
            writer.stdout.readline()
        time.sleep(random.Random(round_).random() * 0.02)  # somewhere inside the next add
        writer.kill()
        writer.wait()
        writer.stdout.close()
        store = HistoryStore(library)
        assert store.notice is None and damaged_copies(library) == []
        store.reconcile_all()
        images = list(store._image_files())
        assert len(store.page(HistoryQuery(), 0, 100)) == store.count() == len(images) >= adds
        assert not list((library / history_store.PENDING_DIR).iterdir())
        assert history_database.quick_check(store._db) == []
        store.close()


def test_the_checks_at_open_stop_at_their_time_budget(tmp_path):
    path = tmp_path / "big.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(history_database.SCHEMA)
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO generations (created, prompt, negative_prompt, model, seed, width, height, params, infotext,"
        " image_path, thumbnail) VALUES (1, ?, '', 'demo', 1, 8, 8, '{}', '', ?, zeroblob(20000))",
        ((f"castle river number {i} " * 8, f"images/x/{i}.png") for i in range(6000)),
    )
    db.execute("COMMIT")
    started = time.monotonic()
    history_database.quick_check(db, 10.0)
    whole = time.monotonic() - started
    started = time.monotonic()
    history_database.quick_check(db, whole / 10)  # the full-text check is bounded the same way
    assert time.monotonic() - started < whole / 2, whole
    db.close()


def test_a_history_of_a_newer_schema_is_refused_untouched(tmp_path):
    library = filled_library(tmp_path / "lib", rows=1)
    with sqlite3.connect(db_file(library)) as db:
        db.execute(f"PRAGMA user_version = {history_database.SCHEMA_VERSION + 1}")
    db.close()
    before = db_file(library).read_bytes()
    with pytest.raises(HistoryError, match="newer mlx-sd"):
        HistoryStore(library)
    assert db_file(library).read_bytes() == before


def files_besides_the_database(library: Path) -> list[Path]:
    return sorted(p.relative_to(library) for p in library.rglob("*") if p.is_file() and "sqlite3" not in p.name)


_FULL_DISK_WRITER = """
import resource, signal, sys
from PIL import Image
from app.history_store import Generation, HistoryError, HistoryStore

store = HistoryStore(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
side = int(sys.argv[3])
try:
    store.add(Image.effect_noise((side, side), 80).convert("RGB"), Generation("full", "", "demo", 1, side, side, {}, ""))
except HistoryError as exc:
    print(exc)
"""


@pytest.mark.parametrize("limit, side", [(2000, 256), (2000, 4)], ids=["the image", "the database"])
def test_a_disk_that_fills_while_writing_is_a_clear_error_and_loses_nothing(tmp_path, limit, side):
    library = filled_library(tmp_path / "lib", rows=3)
    before = files_besides_the_database(library)
    writer = subprocess.run([sys.executable, "-c", _FULL_DISK_WRITER, str(library), str(limit), str(side)],
                            capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=60)
    assert writer.returncode == 0 and writer.stderr == ""
    [message] = writer.stdout.splitlines()
    assert message.startswith("could not record the image") and ("File too large" in message or "is it full" in message)
    store = HistoryStore(library)
    assert store.notice is None and store.count() == 3 and len(store.page(HistoryQuery(), 0, 10)) == 3
    assert files_besides_the_database(library) == before  # the images, and no half-written file
    assert history_database.quick_check(store._db) == []
    store.close()


_READ_ONLY_OPENER = """
import os, sys
from PIL import Image
from app.history_store import Generation, HistoryError, HistoryStore

if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)  # nobody: the library (root's, 0755) is read-only to it
try:
    store = HistoryStore(sys.argv[1])
    store.add(Image.new("RGB", (8, 8)), Generation("read-only", "", "demo", 1, 8, 8, {}, ""))
except HistoryError as exc:
    print(exc)
"""


def test_a_read_only_library_folder_is_a_clear_error_and_nothing_changes(tmp_path):
    base = Path(tempfile.mkdtemp())  # not under pytest's 0700 folder: the other user must reach it
    try:
        base.chmod(0o755)
        library = filled_library(base / "lib", rows=2)
        if os.geteuid() != 0:
            for folder in (library, *[p for p in library.rglob("*") if p.is_dir()]):
                folder.chmod(0o555)
        before = {p: p.read_bytes() for p in library.rglob("*") if p.is_file()}
        opener = subprocess.run([sys.executable, "-c", _READ_ONLY_OPENER, str(library)], capture_output=True,
                                text=True, cwd=Path(__file__).parents[1], timeout=60)
        assert opener.returncode == 0 and opener.stderr == ""
        [message] = opener.stdout.splitlines()
        assert str(library) in message and ("permissions" in message or "read-only" in message)
        assert {p: p.read_bytes() for p in library.rglob("*") if p.is_file()} == before
    finally:
        for folder in base.rglob("*"):
            if folder.is_dir():
                folder.chmod(0o755)
        shutil.rmtree(base)
