"""The resource library shared by the app, the CLI and the server: one root folder holding
`models/`, `loras/`, `embeddings/`, `vae/` and `upscalers/`, plus extra search folders per kind
(`--lora-dir`, `--embeddings-dir`) that are searched before the root.

A resource is named by its file stem ("EasyNegative" for EasyNegative.safetensors); a model is a
converted model folder named by the folder. Every call reads the disk afresh, so files dropped in
while the app runs are found without a refresh. Qt-free and torch-free.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "mlx-sd"
KINDS = ("models", "loras", "embeddings", "vae", "upscalers")
# models are folders holding MODEL_JSON, so they list no file suffix
SUFFIXES: dict[str, tuple[str, ...]] = {
    "models": (),
    "loras": (".safetensors", ".pt", ".ckpt"),
    "embeddings": (".safetensors", ".pt", ".bin"),
    "vae": (".safetensors", ".pt", ".ckpt"),
    "upscalers": (".pth", ".safetensors", ".pt"),
}
MODEL_JSON = "model.json"  # mlx_sd.model_format's marker, named here to keep this module import-light
LABELS = {"models": "model", "loras": "LoRA", "embeddings": "embedding", "vae": "VAE", "upscalers": "upscaler"}
CLOSEST_NAMES = 3
MATCHED_NAME_CHARS = 200  # difflib is quadratic in the name's length: compare at most this much


def default_library_folder(app_name: str = APP_NAME) -> Path:
    """The folder Qt's `QStandardPaths.AppDataLocation` gives an application called `app_name`, so the
    app, the CLI and `mlx-sd serve` (which must not load Qt) find the same library:
    ~/Library/Application Support/<app> on macOS, %APPDATA%\\<app> on Windows, and
    $XDG_DATA_HOME/<app> (by default ~/.local/share/<app>) elsewhere."""
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / app_name
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming") / app_name
    data_home = os.environ.get("XDG_DATA_HOME", "")
    base = Path(data_home) if os.path.isabs(data_home) else home / ".local" / "share"
    return base / app_name


class LibraryError(ValueError):
    """A lookup that found nothing; the message is one line saying what to do."""


@dataclass(frozen=True)
class LibraryItem:
    kind: str
    name: str  # file stem, or the folder name for models
    path: Path


class Library:
    def __init__(
        self,
        root: Path | None = None,
        extra_folders: Mapping[str, Sequence[Path]] | None = None,
        names_only: bool = False,
    ):
        self.root = Path(root).expanduser() if root is not None else default_library_folder()
        # names_only: `find` takes no paths (the HTTP server: a client may name only what the library holds)
        self.names_only = names_only
        extra = dict(extra_folders or {})
        for kind in extra:
            _check_kind(kind)
        self.extra_folders = {kind: tuple(Path(f).expanduser() for f in extra.get(kind, ())) for kind in KINDS}
        self._notices: dict[str, None] = {}  # insertion-ordered set
        self._said: set[str] = set()

    def folder(self, kind: str) -> Path:
        """root/kind; not created here (see ensure_folder)."""
        return self.root / _check_kind(kind)

    def ensure_folder(self, kind: str) -> Path:
        folder = self.folder(kind)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def search_folders(self, kind: str) -> tuple[Path, ...]:
        """Where `kind` is looked for, in order: the extra folders, then root/kind."""
        return (*self.extra_folders[_check_kind(kind)], self.folder(kind))

    def items(self, kind: str) -> list[LibraryItem]:
        """Every resource of `kind`, extra folders first; of two with the same name the first wins
        (within a folder the earlier suffix in SUFFIXES, e.g. .safetensors before .pt) and a notice says so."""
        found: dict[str, LibraryItem] = {}
        for folder in self.search_folders(kind):
            for item in _folder_items(kind, folder):
                first = found.setdefault(item.name, item)
                if first is not item:
                    self._notices.setdefault(
                        f"two {LABELS[kind]}s named {item.name}: using {first.path}, not {item.path}"
                    )
        return list(found.values())

    def find(self, kind: str, name_or_path: str) -> Path:
        """An existing file (a folder for models) is used as is; anything else is a name looked up
        exactly, then ignoring case. Raises LibraryError naming the closest names."""
        _check_kind(kind)
        if not self.names_only and _is_resource(kind, Path(name_or_path).expanduser()):
            return Path(name_or_path).expanduser()
        items = self.items(kind)
        by_name = {item.name: item.path for item in items}
        if name_or_path in by_name:
            return by_name[name_or_path]
        folded = [item.path for item in items if item.name.casefold() == name_or_path.casefold()]
        if len(folded) == 1:
            return folded[0]
        raise LibraryError(self._not_found(kind, name_or_path, list(by_name)))

    def notices(self) -> list[str]:
        """What the listings so far noticed (duplicate names), each returned once over this library's life."""
        fresh = [n for n in self._notices if n not in self._said]
        self._said.update(fresh)
        return fresh

    def _not_found(self, kind: str, name: str, names: list[str]) -> str:
        label = LABELS[kind]
        if os.sep in name or (os.altsep and os.altsep in name):
            if self.names_only:
                return f"{label}s are named, not given as paths: {name!r} (the names are in {self.folder(kind)})"
            return f"{label} file not found: {name}"
        folders = ", ".join(str(f) for f in self.search_folders(kind))
        if not names:
            return f"no {label} named {name!r}: there are no {label}s in {folders}"
        closest = _closest(name, names)
        hint = f"closest: {', '.join(closest)}" if closest else f"{len(names)} {label}s there, e.g. {names[0]}"
        return f"no {label} named {name!r} in {folders} ({hint})"


def file_identity(path: Path) -> tuple[int, int] | None:
    """(size, modification time in ns) of a file, None when it is gone: what says a resource changed."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise LibraryError(f"unknown library kind {kind!r}: expected one of {', '.join(KINDS)}")
    return kind


def _is_resource(kind: str, path: Path) -> bool:
    try:  # a name too long for a path is simply no file
        return (path / MODEL_JSON).is_file() if kind == "models" else path.is_file()
    except OSError:
        return False


def _folder_items(kind: str, folder: Path) -> list[LibraryItem]:
    """The usable entries of one folder, sorted by name (case-insensitive) then suffix preference;
    hidden entries (a copy in progress, macOS metadata) and unreadable folders are skipped."""
    suffixes = SUFFIXES[kind]
    try:
        entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    except OSError:
        return []
    if kind == "models":
        items = [LibraryItem(kind, e.name, e) for e in entries if _is_resource(kind, e)]
        return sorted(items, key=lambda i: (i.name.casefold(), i.name))
    items = [LibraryItem(kind, e.stem, e) for e in entries if e.suffix.lower() in suffixes and e.is_file()]
    return sorted(items, key=lambda i: (i.name.casefold(), i.name, suffixes.index(i.path.suffix.lower())))


def _closest(name: str, names: list[str]) -> list[str]:
    folded = {n.casefold()[:MATCHED_NAME_CHARS]: n for n in reversed(names)}
    matches = difflib.get_close_matches(name.casefold()[:MATCHED_NAME_CHARS], list(folded), CLOSEST_NAMES, 0.5)
    return [folded[m] for m in matches]
