"""The prompt history: a Qt-free SQLite store of every finished image, in the user's library folder.

    <library>/history.sqlite3     WAL-mode database: one row per image, FTS5 index over the prompts
    <library>/images/YYYY-MM-DD/  the PNGs (with A1111 `parameters` and our own `mlx-sd` JSON chunk)
    <library>/.pending/           one marker per image being added, until its row is committed (named
                                  with the writer's pid, so that only markers of writers that are
                                  gone are finished by another store)
    <library>/.trash/             images being deleted (a crash mid-delete is undone on the next open)

Durability: a pending marker is written, then the image is written, fsynced and renamed into place,
then its row is committed, then the marker is removed. Rows keep image paths relative to the library,
so moving the library folder keeps the history. Opening the store finishes whatever a crash
interrupted, looking only at the markers and the trash, so it costs the same with 10 or 100,000 images:
a PNG whose row was never committed is recorded from the JSON chunk it carries. `reconcile_all` also
scans the whole images folder (for PNGs without a row, and rows whose image was deleted behind the
app's back); the app runs it off the UI thread. Whose the database file is, whether it is whole, and
what is done when it is not, is history_database's job.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from PIL import Image, PngImagePlugin

from mlx_sd.image_metadata import PARAMETERS_KEY, write_durably
from mlx_sd.model_format import process_alive

from .history_database import HistoryError, describe, is_damage, open_database, rebuild_fts

DB_NAME = "history.sqlite3"
IMAGES_DIR = "images"
PENDING_DIR = ".pending"
TRASH_DIR = ".trash"
RECORD_CHUNK = "mlx-sd"  # PNG text chunk holding the record as JSON, used to recover a lost row
THUMBNAIL_SIDE = 256

_COLUMNS = "id, created, prompt, negative_prompt, model, seed, width, height, params, infotext, image_path, favourite"


@dataclass(frozen=True)
class Generation:
    """What the history records about one image (besides the image and its thumbnail)."""

    prompt: str
    negative_prompt: str
    model: str
    seed: int
    width: int
    height: int
    params: dict[str, Any]  # the full request, JSON-serialisable (no images)
    infotext: str  # A1111 `parameters` text, also written into the PNG
    created: float = 0.0  # unix time; 0 means now


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    generation: Generation
    image_path: Path  # absolute
    favourite: bool


@dataclass(frozen=True)
class HistoryQuery:
    text: str = ""  # full-text search over prompt and negative prompt
    model: str | None = None
    since: float | None = None  # unix time, inclusive
    until: float | None = None  # unix time, exclusive
    favourites_only: bool = False


def fts_expression(text: str) -> str:
    """A user's search words as an FTS5 query: every word must match, as a prefix."""
    words = [w.replace('"', '""') for w in text.split()]
    return " ".join(f'"{w}"*' for w in words)


def encode_png(image: Image.Image, generation: Generation) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, generation.infotext, zip=False)
    info.add_text(RECORD_CHUNK, json.dumps(_record(generation)), zip=True)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _record(generation: Generation) -> dict[str, Any]:
    return {
        "prompt": generation.prompt,
        "negative_prompt": generation.negative_prompt,
        "model": generation.model,
        "seed": generation.seed,
        "width": generation.width,
        "height": generation.height,
        "params": generation.params,
        "infotext": generation.infotext,
        "created": generation.created,
    }


def make_thumbnail(image: Image.Image) -> bytes:
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


# A row is shown only if its columns have the types we write and its params are a JSON object; a row
# damaged by hand or by a disk is skipped (see damaged_rows) rather than failing every page it is on.
# Only pages and single rows are filtered: counting and listing models stay on their indexes (a count
# through this filter reads every row: 0.11 s for 20,000), at the price of counting damaged rows too.
_WHOLE_ROW = (
    "CASE WHEN json_valid(g.params) THEN json_type(g.params) = 'object' ELSE 0 END"
    " AND typeof(g.seed) = 'integer' AND typeof(g.width) = 'integer' AND typeof(g.height) = 'integer'"
    " AND typeof(g.created) IN ('integer', 'real') AND typeof(g.image_path) = 'text'"
    " AND typeof(g.prompt) = 'text' AND typeof(g.negative_prompt) = 'text' AND typeof(g.model) = 'text'"
    " AND typeof(g.infotext) = 'text'"
)
STALE_SECONDS = 3600.0  # an add takes well under a second: a marker this old lost its owner long ago
_PROCESS_STARTED = time.time()  # markers from before this are an earlier process's


class HistoryStore:
    """The history of one library folder. Not thread-safe: use it from one thread.

    Every method raises HistoryError, never a raw sqlite3/json/OS error. `notice` is what the user
    should be told once about opening (a damaged database moved aside), or None."""

    def __init__(self, library: str | os.PathLike[str]):
        self.library = Path(library)
        self.skipped_rows = 0  # rows read but not shown because they are damaged (beyond damaged_rows)
        try:
            self.library.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HistoryError(f"cannot open the history in {self.library}: {exc.strerror or exc}") from exc
        opened = open_database(self.library / DB_NAME)
        self._db, self.notice = opened.connection, opened.notice
        try:
            self._finish_interrupted()
        except HistoryError:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    # -- writing -----------------------------------------------------------------------------

    def add(self, image: Image.Image, generation: Generation) -> HistoryEntry:
        """Write the image durably, then commit its row. Raises HistoryError (e.g. disk full)."""
        created = generation.created or time.time()
        generation = Generation(**{**_record(generation), "created": created})
        path = self._new_image_path(created, generation.seed)
        marker = self.library / PENDING_DIR / f"{path.stem}.{os.getpid()}.json"  # see _left_behind
        try:
            write_durably(marker, json.dumps({"image": self._relative(path)}).encode())
            write_durably(path, encode_png(image, generation))
            entry_id = self._insert(generation, path, make_thumbnail(image))
        except (OSError, sqlite3.Error) as exc:
            path.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
            raise HistoryError(f"could not record the image in {self.library}: {_reason(exc)}") from exc
        marker.unlink(missing_ok=True)
        return HistoryEntry(entry_id, generation, path, False)

    def _new_image_path(self, created: float, seed: int) -> Path:
        stamp = time.localtime(created)
        folder = self.library / IMAGES_DIR / time.strftime("%Y-%m-%d", stamp)
        stem = f"{time.strftime('%H%M%S', stamp)}-{int(created * 1e6) % 1_000_000:06d}-s{seed}"
        path, n = folder / f"{stem}.png", 1
        while path.exists():
            path, n = folder / f"{stem}-{n}.png", n + 1
        return path

    def _insert(self, generation: Generation, path: Path, thumbnail: bytes) -> int:
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO generations (created, prompt, negative_prompt, model, seed, width, height,"
                " params, infotext, image_path, thumbnail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    generation.created, generation.prompt, generation.negative_prompt, generation.model,
                    generation.seed, generation.width, generation.height, json.dumps(generation.params),
                    generation.infotext, self._relative(path), thumbnail,
                ),
            )
        return int(cursor.lastrowid)

    def set_favourite(self, entry_id: int, favourite: bool) -> None:
        try:
            with self._transaction():
                self._db.execute("UPDATE generations SET favourite = ? WHERE id = ?", (int(favourite), entry_id))
        except sqlite3.Error as exc:
            raise HistoryError(f"could not change the favourite in {self.library}: {describe(exc)}") from exc

    def delete(self, entry_id: int) -> None:
        """Delete one image and its row. The file goes to .trash first, so a crash is recoverable."""
        entry = self.get(entry_id)
        if entry is None:
            return
        trash = self.library / TRASH_DIR
        trashed = trash / f"{entry_id}.{os.getpid()}-{entry.image_path.name}"  # see _left_behind
        try:
            trash.mkdir(exist_ok=True)
            if entry.image_path.exists():
                os.replace(entry.image_path, trashed)
            with self._transaction():
                self._db.execute("DELETE FROM generations WHERE id = ?", (entry_id,))
        except (OSError, sqlite3.Error) as exc:
            if trashed.exists():
                os.replace(trashed, entry.image_path)
            raise HistoryError(f"could not delete {entry.image_path.name}: {_reason(exc)}") from exc
        trashed.unlink(missing_ok=True)

    # -- reading -----------------------------------------------------------------------------

    def count(self, query: HistoryQuery = HistoryQuery()) -> int:
        """How many rows match `query`, damaged ones included (pages skip those)."""
        where, args = self._where(query)
        return int(self._read(f"SELECT count(*) FROM generations g {where}", args)[0][0])

    def page(self, query: HistoryQuery, offset: int, limit: int) -> list[HistoryEntry]:
        """Entries matching `query`, newest first; `offset` counts rows that are whole in SQL's eyes."""
        where, args = self._where(query, _WHOLE_ROW)
        columns = ", ".join(f"g.{c.strip()}" for c in _COLUMNS.split(","))
        rows = self._read(
            f"SELECT {columns} FROM generations g {where} ORDER BY g.created DESC, g.id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        entries = [self._entry(row) for row in rows]
        self.skipped_rows += entries.count(None)
        return [entry for entry in entries if entry is not None]

    def get(self, entry_id: int) -> HistoryEntry | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM generations g WHERE id = ? AND {_WHOLE_ROW}", (entry_id,))
        return self._entry(rows[0]) if rows else None

    def thumbnail(self, entry_id: int) -> bytes | None:
        rows = self._read("SELECT thumbnail FROM generations WHERE id = ?", (entry_id,))
        return bytes(rows[0][0]) if rows and isinstance(rows[0][0], bytes) else None

    def models(self) -> list[str]:
        return [str(r[0]) for r in self._read("SELECT DISTINCT model FROM generations ORDER BY model")]

    def damaged_rows(self) -> int:
        """How many rows are hidden because their columns or JSON are damaged."""
        return int(self._read(f"SELECT count(*) FROM generations g WHERE NOT ({_WHOLE_ROW})")[0][0])

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a query; a damaged full-text index is rebuilt once and the query tried again."""
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            if not (is_damage(exc) and "generations_fts" in sql):
                raise HistoryError(f"cannot read the history in {self.library}: {describe(exc)}") from exc
        try:
            rebuild_fts(self._db)
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot read the history in {self.library}: {describe(exc)}") from exc

    def _where(self, query: HistoryQuery, *conditions: str) -> tuple[str, tuple[Any, ...]]:
        clauses = list(conditions)
        args: list[Any] = []
        expression = fts_expression(query.text)
        if expression:
            clauses.append("g.id IN (SELECT rowid FROM generations_fts WHERE generations_fts MATCH ?)")
            args.append(expression)
        if query.model is not None:
            clauses.append("g.model = ?")
            args.append(query.model)
        if query.since is not None:
            clauses.append("g.created >= ?")
            args.append(query.since)
        if query.until is not None:
            clauses.append("g.created < ?")
            args.append(query.until)
        if query.favourites_only:
            clauses.append("g.favourite = 1")
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)

    def _entry(self, row: tuple[Any, ...]) -> HistoryEntry | None:
        """The row as an entry, or None if it is damaged in a way the SQL filter cannot see."""
        (entry_id, created, prompt, negative, model, seed, width, height, params, infotext, relative, fav) = row
        path = self._library_path(relative)
        try:
            params = json.loads(params)
        except (ValueError, TypeError, RecursionError):
            return None
        if path is None or not isinstance(params, dict) or not _is_time(created):
            return None
        generation = Generation(prompt, negative, model, seed, width, height, params, infotext, created)
        return HistoryEntry(entry_id, generation, path, bool(fav))

    def _library_path(self, relative: object) -> Path | None:
        """A recorded image path (from a row or a pending marker) as an absolute path, or None unless it is
        a relative name of a PNG inside the images folder."""
        if not isinstance(relative, str) or "\0" in relative or "\\" in relative:
            return None
        parts = PurePosixPath(relative).parts
        if relative.startswith("/") or len(parts) < 2 or parts[0] != IMAGES_DIR or ".." in parts:
            return None
        return self.library / relative if relative.endswith(".png") else None

    # -- consistency -------------------------------------------------------------------------

    def _finish_interrupted(self) -> None:
        """Complete or undo the adds and deletes a crash interrupted (see the module docstring). Markers
        whose owner may still be writing (another store of a running process) are left to it."""
        try:
            self._restore_trash()
            pending = self.library / PENDING_DIR
            if not pending.is_dir():
                return
            for file in pending.iterdir():
                if file.suffix == ".json" and not file.name.startswith("."):
                    self._finish_marker(file)
                elif _left_behind(file, _marker_writer(file.name)):  # write_durably's temp file of a marker
                    _remove(file)
        except (OSError, sqlite3.Error) as exc:
            reason = _reason(exc)
            raise HistoryError(f"cannot finish the history's interrupted work in {self.library}: {reason}") from exc

    def _finish_marker(self, marker: Path) -> None:
        try:
            content = json.loads(marker.read_bytes())
        except (OSError, ValueError, RecursionError):
            content = None
        image = content.get("image") if isinstance(content, dict) else content  # a bare string before the pid
        path = self._library_path(image)
        if path is None:
            _remove(marker)  # not a marker of ours: nothing it names is touched
            return
        if not _left_behind(marker, _marker_writer(marker.name)):
            return
        relative = self._relative(path)
        recorded = self._db.execute("SELECT 1 FROM generations WHERE image_path = ?", (relative,)).fetchone()
        if not recorded and path.is_file():
            self._recover(path)
        for partial in path.parent.glob(f".{glob.escape(path.name)}.*partial"):  # write_durably's temp
            _remove(partial)
        _remove(marker)

    def reconcile_all(self) -> None:
        """Also scan every image: record PNGs without a row, drop rows whose image is gone."""
        self._finish_interrupted()
        try:
            known = {row[0] for row in self._db.execute("SELECT image_path FROM generations")}
            for path in self._image_files():
                if self._relative(path) not in known:
                    self._recover(path)
            with self._transaction():
                for entry_id, relative in self._db.execute("SELECT id, image_path FROM generations").fetchall():
                    path = self._library_path(relative)
                    if path is not None and not path.exists():
                        self._db.execute("DELETE FROM generations WHERE id = ?", (entry_id,))
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"cannot scan the history's images in {self.library}: {_reason(exc)}") from exc

    def _restore_trash(self) -> None:
        """A file left in .trash was being deleted; finish the delete if its row is gone, else undo. Files
        that a running delete (another store's) may still be working on are left to it."""
        trash = self.library / TRASH_DIR
        if not trash.is_dir():
            return
        for trashed in trash.iterdir():
            head, _, name = trashed.name.partition("-")  # <id>.<pid>-<name>, or <id>-<name> before the pid
            entry_id, _, writer = head.partition(".")
            if not _left_behind(trashed, writer, dated_by_change=True):
                continue
            row = self._db.execute(
                "SELECT image_path FROM generations WHERE id = ?", (int(entry_id) if entry_id.isdigit() else -1,)
            ).fetchone()
            path = self._library_path(row[0]) if row else None
            if path is not None and path.name == name:
                os.replace(trashed, path)
            else:
                _remove(trashed)

    def _image_files(self) -> Iterator[Path]:
        images = self.library / IMAGES_DIR
        if images.is_dir():
            yield from (p for p in images.rglob("*.png") if not p.name.startswith("."))

    def _recover(self, path: Path) -> None:
        try:
            with Image.open(path) as image:
                image.load()
                record = json.loads(image.text[RECORD_CHUNK])  # type: ignore[attr-defined]
                generation = Generation(**record)
                self._insert(generation, path, make_thumbnail(image))
        except (OSError, KeyError, ValueError, TypeError, AttributeError, RecursionError, sqlite3.Error):
            return  # not one of ours, or unreadable: leave the file alone

    def _relative(self, path: Path) -> str:
        if not path.is_relative_to(self.library):
            raise ValueError(f"{path} is outside the library {self.library}")
        return path.relative_to(self.library).as_posix()

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def _left_behind(file: Path, writer: str, dated_by_change: bool = False) -> bool:
    """Whether `file` (a pending marker, write_durably's temp file of one, an image in the trash) was left by
    a process that is gone. `writer` is the pid its writer put in the name ("" if none): gone when that
    process is not running; with no pid (or our own pid), when written before this process started; and
    whoever wrote it, when older than an add or a delete could take. `dated_by_change`: by the inode's
    change time, as a rename into the trash keeps the image's modification time."""
    try:
        stat = file.stat()
    except FileNotFoundError:
        return False  # its writer just finished with it
    age = time.time() - (stat.st_ctime if dated_by_change else stat.st_mtime)
    pid = int(writer) if writer.isdigit() and len(writer) < 10 else 0
    if age > STALE_SECONDS:
        return True
    if pid <= 0 or pid == os.getpid():
        return age > time.time() - _PROCESS_STARTED
    return not process_alive(pid)


def _marker_writer(name: str) -> str:
    """The writer's pid in a marker's name (`<stem>.<pid>.json`, or its temp file `.<that>.<random>.partial`)."""
    parts = name.split(".")
    return parts[parts.index("json", 1) - 1] if "json" in parts[1:] else ""


def _is_time(created: float) -> bool:
    """Whether a recorded creation time is one the clock can show (not NaN, not beyond year 9999)."""
    try:
        time.localtime(created)
    except (OverflowError, OSError, ValueError):
        return False
    return True


def _remove(path: Path) -> None:
    """Remove a marker or temp file of ours (a folder in its place is left alone)."""
    if not path.is_dir():
        path.unlink(missing_ok=True)


def _reason(exc: OSError | sqlite3.Error) -> str:
    return describe(exc) if isinstance(exc, sqlite3.Error) else str(exc)


def move_library(old: str | os.PathLike[str], new: str | os.PathLike[str]) -> Path:
    """Move a library folder (history and images) to `new`, an empty or new folder.

    Close every HistoryStore of the library first (SQLite's WAL is folded back in on close)."""
    source, target = Path(old), Path(new)
    if target.exists() and any(target.iterdir()):
        raise HistoryError(f"{target} is not empty; choose an empty or new folder for the library")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.rmdir()
    shutil.move(str(source), str(target))
    return target
