"""Opening the history's SQLite file safely: whose it is, whether it is whole, and what to do if not.

Before anything is written to the file it is read through a read-only connection (which never
writes to the file, not even a checkpoint on close), so that:
- a file of another program (other tables, or another `application_id`) is refused, untouched;
- a history of ours made before the mark (our exact table set, no mark) is adopted and marked;
- a file that is not a database at all, or whose pages `PRAGMA quick_check` finds damaged, is moved
  aside byte for byte (`history.damaged-YYYYMMDD-HHMMSS.sqlite3`, with its -wal/-shm) and a fresh
  history started; the images keep their records, so `HistoryStore.reconcile_all` fills it again;
- a broken full-text index (FTS5 `integrity-check`) is rebuilt from the rows it indexes.
The checks are bounded in time, so a very large history still opens quickly (unchecked beyond that).
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from contextlib import closing  # a Connection's own context manager commits but does not close
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
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

APPLICATION_ID = 0x6D6C7364  # "mlsd" in the database header marks the file as an mlx-sd history
SCHEMA_VERSION = 1  # PRAGMA user_version of the schema above
SQLITE_MAGIC = b"SQLite format 3\x00"
# at most this long for the page check at open: a 250 MB history (20,000 images) takes 0.2-0.4 s on an
# AMD EPYC Zen 3; a larger one is checked only that far, so opening it stays quick
CHECK_SECONDS = 1.0
FTS_CHECK_SECONDS = 0.5  # and this long for the full-text index's check
_DAMAGE_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class HistoryError(RuntimeError):
    """The history cannot be read or written (disk full, permissions, a damaged database)."""


@dataclass(frozen=True)
class OpenedDatabase:
    connection: sqlite3.Connection
    notice: str | None  # what the user should be told once (the damaged file was moved aside)


def describe(exc: sqlite3.Error) -> str:
    """SQLite's error in the user's words where it has a common cause."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    plain = {
        sqlite3.SQLITE_READONLY: "the library folder or the database is read-only",
        sqlite3.SQLITE_FULL: "the disk is full",
        sqlite3.SQLITE_IOERR: "reading or writing the disk failed (is it full, or gone?)",
        sqlite3.SQLITE_CANTOPEN: "it cannot be opened (check the library folder's permissions)",
        sqlite3.SQLITE_BUSY: "another program is using it",
        sqlite3.SQLITE_CORRUPT: "the database is damaged (restart the app to check and repair it)",
    }
    return plain.get(code, str(exc))


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file itself is damaged (not busy, read-only, full...)."""
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF in _DAMAGE_CODES


@functools.cache
def our_tables() -> frozenset[str]:
    """The tables (FTS5 shadow tables included) that SCHEMA creates: how a history made before the
    mark is recognised."""
    with closing(sqlite3.connect(":memory:")) as db:
        db.executescript(SCHEMA)
        return frozenset(_tables(db))


def open_database(path: Path) -> OpenedDatabase:
    """Open (or create) the history database at `path`, checked and marked as ours. Raises HistoryError
    for a file that must not be touched (another program's database, a folder in its place) and for
    files that cannot be opened at all (permissions)."""
    if (path.exists() or path.is_symlink()) and not path.is_file():
        raise HistoryError(f"{path} is not a database file; move it away or choose another library folder")
    damage = _inspect(path)
    notice = _start_afresh(path, damage) if damage else None
    try:
        return OpenedDatabase(_prepare(path), notice)
    except sqlite3.Error as exc:
        if notice or not is_damage(exc):
            raise HistoryError(f"cannot open the history {path}: {describe(exc)}") from exc
        notice = _start_afresh(path, str(exc))  # damage the read-only checks did not reach
    try:
        return OpenedDatabase(_prepare(path), notice)
    except sqlite3.Error as exc:
        raise HistoryError(f"cannot open the history {path}: {describe(exc)}") from exc


def _start_afresh(path: Path, damage: str) -> str:
    aside = move_aside(path)
    first_line = damage.strip().splitlines()[0] if damage.strip() else "unreadable"
    return (
        f"The history database was damaged ({first_line}) and was moved to {aside}; a new history was "
        "started; the library's images are added back to it from their files after the next generation."
    )


def _prepare(path: Path) -> sqlite3.Connection:
    """Connect read-write, give the file our schema and mark, and mend a broken full-text index."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        if not fts_whole(db):
            rebuild_fts(db)
    except BaseException:
        db.close()
        raise
    return db


def _inspect(path: Path) -> str | None:
    """Read-only look at an existing file: None if it is ours (or new, or empty) and whole, else what
    is damaged. Raises HistoryError for another program's database."""
    if not path.exists():
        return None
    try:
        with open(path, "rb") as handle:
            header = handle.read(100)  # SQLite's database header
    except OSError as exc:
        raise HistoryError(f"cannot read the history {path}: {exc.strerror or exc}") from exc
    if header and not header.startswith(SQLITE_MAGIC):
        return "not an SQLite database"
    if int.from_bytes(header[68:72], "big") != APPLICATION_ID:
        _refuse_if_foreign(path, header)
    elif int.from_bytes(header[60:64], "big") > SCHEMA_VERSION:  # PRAGMA user_version
        raise HistoryError(f"{path} was made by a newer mlx-sd; update mlx-sd or choose another library folder")
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            problems = quick_check(db)
    except sqlite3.Error as exc:
        if is_damage(exc):
            return str(exc) or "unreadable"
        raise HistoryError(f"cannot open the history {path}: {describe(exc)}") from exc
    lines = [line for problem in problems for line in problem.splitlines() if not line.startswith("***")]
    return f"SQLite's check found: {lines[0] if lines else 'damage'}" if problems else None


def _refuse_if_foreign(path: Path, header: bytes) -> None:
    """Raise HistoryError if the file is another program's database: marked by it, or holding tables that
    are not ours. Read as immutable, so that not even SQLite's -wal/-shm files appear beside it."""
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)) as db:
            tables = _tables(db)
    except sqlite3.Error:
        return  # unreadable: the integrity check that follows says how
    application_id = int.from_bytes(header[68:72], "big")
    if application_id != 0 or (tables and tables != our_tables()):
        shown = ", ".join(sorted(tables)[:4]) + (", ..." if len(tables) > 4 else "")
        raise HistoryError(
            f"{path} is another program's database (tables: {shown or 'none'}), not an mlx-sd history;"
            " move it away or choose another library folder"
        )


def quick_check(db: sqlite3.Connection, seconds: float = CHECK_SECONDS) -> list[str]:
    """The damage `PRAGMA quick_check` finds within `seconds` (a large file is checked only that far)."""
    rows = _bounded(db, "PRAGMA quick_check(8)", seconds)
    problems = [str(row[0]) for row in rows or []]
    return [] if problems == ["ok"] else problems


def fts_whole(db: sqlite3.Connection, seconds: float = FTS_CHECK_SECONDS) -> bool:
    """Whether the full-text index agrees with the rows it indexes (True when out of time)."""
    try:
        _bounded(db, "INSERT INTO generations_fts(generations_fts) VALUES('integrity-check')", seconds)
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            return False
        raise
    return True


def rebuild_fts(db: sqlite3.Connection) -> None:
    """Rebuild the full-text index from the generations table (its content table)."""
    db.execute("INSERT INTO generations_fts(generations_fts) VALUES('rebuild')")


def move_aside(path: Path) -> Path:
    """Rename the database and its -wal/-shm to `<stem>.damaged-YYYYMMDD-HHMMSS<suffix>` (never delete)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = path.with_name(f"{path.stem}.damaged-{stamp}{path.suffix}"), 1
    while any(Path(f"{target}{extra}").exists() for extra in ("", "-wal", "-shm")):
        target, n = path.with_name(f"{path.stem}.damaged-{stamp}-{n}{path.suffix}"), n + 1
    try:
        # the -wal first: a WAL left behind would be replayed into the fresh database
        for extra in ("-wal", "-shm", ""):
            if Path(f"{path}{extra}").exists():
                os.replace(f"{path}{extra}", f"{target}{extra}")
    except OSError as exc:
        raise HistoryError(f"the history {path} is damaged and cannot be moved aside: {exc.strerror or exc}") from exc
    return target


def _bounded(db: sqlite3.Connection, sql: str, seconds: float) -> list[tuple] | None:
    """Run `sql`, giving up (None) after `seconds`. An interrupt from a timer, not a progress handler:
    an integrity check does all its work inside one VM instruction, where only an interrupt reaches."""
    timer = threading.Timer(seconds, db.interrupt)
    timer.start()
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_INTERRUPT:
            return None
        raise
    finally:
        timer.cancel()
        timer.join()  # an interrupt arriving after the statement ended finds nothing running: a no-op


def _tables(db: sqlite3.Connection) -> frozenset[str]:
    return frozenset(row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"))
