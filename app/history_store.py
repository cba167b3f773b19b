"""The prompt history: a Qt-free SQLite store of every finished image, in the user's library folder.

    <library>/history.sqlite3     WAL-mode database: one row per image, FTS5 index over the prompts
    <library>/images/YYYY-MM-DD/  the PNGs (with A1111 `parameters` and our own `mlx-sd` JSON chunk)
    <library>/.pending/           one marker per image being added, until its row is committed
    <library>/.trash/             images being deleted (a crash mid-delete is undone on the next open)

Durability: a pending marker is written, then the image is written, fsynced and renamed into place,
then its row is committed, then the marker is removed. Rows keep image paths relative to the library,
so moving the library folder keeps the history. Opening the store finishes whatever a crash
interrupted, looking only at the markers and the trash, so it costs the same with 10 or 100,000 images:
a PNG whose row was never committed is recorded from the JSON chunk it carries. `reconcile_all` also
scans the whole images folder (for PNGs without a row, and rows whose image was deleted behind the
app's back); the app runs it off the UI thread.
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
from pathlib import Path
from typing import Any, Iterator

from PIL import Image, PngImagePlugin

from mlx_sd.image_metadata import PARAMETERS_KEY, write_durably

DB_NAME = "history.sqlite3"
IMAGES_DIR = "images"
PENDING_DIR = ".pending"
TRASH_DIR = ".trash"
RECORD_CHUNK = "mlx-sd"  # PNG text chunk holding the record as JSON, used to recover a lost row
THUMBNAIL_SIDE = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    prompt TEXT NOT NULL,
    negative_prompt TEXT NOT NULL,
    model TEXT NOT NULL,
    seed INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    params TEXT NOT NULL,
    infotext TEXT NOT NULL,
    image_path TEXT NOT NULL UNIQUE,
    favourite INTEGER NOT NULL DEFAULT 0,
    thumbnail BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS generations_created ON generations(created);
CREATE INDEX IF NOT EXISTS generations_model ON generations(model, created);
CREATE VIRTUAL TABLE IF NOT EXISTS generations_fts USING fts5(
    prompt, negative_prompt, content='generations', content_rowid='id'
);
CREATE TRIGGER IF NOT EXISTS generations_ai AFTER INSERT ON generations BEGIN
    INSERT INTO generations_fts(rowid, prompt, negative_prompt)
    VALUES (new.id, new.prompt, new.negative_prompt);
END;
CREATE TRIGGER IF NOT EXISTS generations_ad AFTER DELETE ON generations BEGIN
    INSERT INTO generations_fts(generations_fts, rowid, prompt, negative_prompt)
    VALUES ('delete', old.id, old.prompt, old.negative_prompt);
END;
"""

_COLUMNS = "id, created, prompt, negative_prompt, model, seed, width, height, params, infotext, image_path, favourite"


class HistoryError(RuntimeError):
    """The history cannot be read or written (disk full, permissions, a damaged database)."""


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


class HistoryStore:
    """The history of one library folder. Not thread-safe: use it from one thread."""

    def __init__(self, library: str | os.PathLike[str]):
        self.library = Path(library)
        try:
            self.library.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.library / DB_NAME, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise HistoryError(f"cannot open the history in {self.library}: {exc}") from exc
        self._finish_interrupted()

    def close(self) -> None:
        self._db.close()

    # -- writing -----------------------------------------------------------------------------

    def add(self, image: Image.Image, generation: Generation) -> HistoryEntry:
        """Write the image durably, then commit its row. Raises HistoryError (e.g. disk full)."""
        created = generation.created or time.time()
        generation = Generation(**{**_record(generation), "created": created})
        path = self._new_image_path(created, generation.seed)
        marker = self.library / PENDING_DIR / f"{path.stem}.json"
        try:
            write_durably(marker, json.dumps(self._relative(path)).encode())
            write_durably(path, encode_png(image, generation))
            entry_id = self._insert(generation, path, make_thumbnail(image))
        except (OSError, sqlite3.Error) as exc:
            path.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
            raise HistoryError(f"could not record the image in {self.library}: {exc}") from exc
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
        with self._transaction():
            self._db.execute("UPDATE generations SET favourite = ? WHERE id = ?", (int(favourite), entry_id))

    def delete(self, entry_id: int) -> None:
        """Delete one image and its row. The file goes to .trash first, so a crash is recoverable."""
        entry = self.get(entry_id)
        if entry is None:
            return
        trash = self.library / TRASH_DIR
        trash.mkdir(exist_ok=True)
        trashed = trash / f"{entry_id}-{entry.image_path.name}"
        try:
            if entry.image_path.exists():
                os.replace(entry.image_path, trashed)
            with self._transaction():
                self._db.execute("DELETE FROM generations WHERE id = ?", (entry_id,))
        except (OSError, sqlite3.Error) as exc:
            if trashed.exists():
                os.replace(trashed, entry.image_path)
            raise HistoryError(f"could not delete {entry.image_path.name}: {exc}") from exc
        trashed.unlink(missing_ok=True)

    # -- reading -----------------------------------------------------------------------------

    def count(self, query: HistoryQuery = HistoryQuery()) -> int:
        where, args = self._where(query)
        return int(self._db.execute(f"SELECT count(*) FROM generations g {where}", args).fetchone()[0])

    def page(self, query: HistoryQuery, offset: int, limit: int) -> list[HistoryEntry]:
        """Entries matching `query`, newest first."""
        where, args = self._where(query)
        columns = ", ".join(f"g.{c.strip()}" for c in _COLUMNS.split(","))
        rows = self._db.execute(
            f"SELECT {columns} FROM generations g {where} ORDER BY g.created DESC, g.id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        return [self._entry(row) for row in rows]

    def get(self, entry_id: int) -> HistoryEntry | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM generations WHERE id = ?", (entry_id,)).fetchone()
        return self._entry(row) if row else None

    def thumbnail(self, entry_id: int) -> bytes | None:
        row = self._db.execute("SELECT thumbnail FROM generations WHERE id = ?", (entry_id,)).fetchone()
        return bytes(row[0]) if row else None

    def models(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT model FROM generations ORDER BY model")]

    def _where(self, query: HistoryQuery) -> tuple[str, tuple[Any, ...]]:
        clauses: list[str] = []
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

    def _entry(self, row: tuple[Any, ...]) -> HistoryEntry:
        (entry_id, created, prompt, negative, model, seed, width, height, params, infotext, path, fav) = row
        generation = Generation(prompt, negative, model, seed, width, height, json.loads(params), infotext, created)
        return HistoryEntry(entry_id, generation, self.library / path, bool(fav))

    # -- consistency -------------------------------------------------------------------------

    def _finish_interrupted(self) -> None:
        """Complete or undo the adds and deletes a crash interrupted (see the module docstring)."""
        self._restore_trash()
        pending = self.library / PENDING_DIR
        if not pending.is_dir():
            return
        for marker in pending.glob("*.json"):
            try:
                path = self.library / json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError, TypeError):
                marker.unlink(missing_ok=True)
                continue
            recorded = self._db.execute(
                "SELECT 1 FROM generations WHERE image_path = ?", (self._relative(path),)
            ).fetchone()
            if not recorded and path.exists():
                self._recover(path)
            for partial in path.parent.glob(f".{glob.escape(path.name)}.*partial"):  # write_durably's temp
                partial.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)

    def reconcile_all(self) -> None:
        """Also scan every image: record PNGs without a row, drop rows whose image is gone."""
        self._finish_interrupted()
        known = {row[0] for row in self._db.execute("SELECT image_path FROM generations")}
        for path in self._image_files():
            if self._relative(path) not in known:
                self._recover(path)
        with self._transaction():
            for entry_id, relative in self._db.execute("SELECT id, image_path FROM generations").fetchall():
                if not (self.library / relative).exists():
                    self._db.execute("DELETE FROM generations WHERE id = ?", (entry_id,))

    def _restore_trash(self) -> None:
        """A file still in .trash was being deleted; finish the delete if its row is gone, else undo."""
        trash = self.library / TRASH_DIR
        if not trash.is_dir():
            return
        for trashed in trash.iterdir():
            entry_id, _, name = trashed.name.partition("-")
            row = self._db.execute(
                "SELECT image_path FROM generations WHERE id = ?", (int(entry_id) if entry_id.isdigit() else -1,)
            ).fetchone()
            if row and Path(row[0]).name == name:
                os.replace(trashed, self.library / row[0])
            else:
                trashed.unlink(missing_ok=True)

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
        except (OSError, KeyError, ValueError, TypeError, AttributeError, sqlite3.Error):
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
