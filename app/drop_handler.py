"""What a file, image or clipboard content dropped on the window is, and the event filter that catches
drops anywhere on it.

- an image becomes the image-to-image source;
- an image carrying generation parameters (ours or A1111's) offers to restore them;
- a `.safetensors` checkpoint or a diffusers folder goes to the model import;
- a LoRA, embedding, VAE or upscaler model (`.safetensors`, or, with Settings > Allow pickle files, a
  small `.pt`/`.pth` read with the weights-only unpickler), recognised from its keys, is copied into the
  library (app.library_import);
- anything else gets a message saying what can be dropped.

Reading a file (decoding the image, parsing its metadata) runs on a worker thread, never on the UI
thread: DropFilter takes what it needs from the drop on the UI thread (paths, or the image data) and
emits `dropped` with the DropItem when the worker is done, so a slow or hostile file never freezes
the window.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QEvent, QMimeData, QObject, QRunnable, QThreadPool, Signal, Slot
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent, QImage

from convert.diffusers_folder import MODEL_INDEX
from mlx_sd.image_metadata import UNDECODABLE, open_image
from mlx_sd.infotext import Infotext, parse_infotext
from mlx_sd.pickle_files import PICKLE_SUFFIXES

from mlx_sd.library import LABELS, SUFFIXES

from .library_import import RESOURCE_KINDS, LibraryImportError, PicklesNotAllowed, classify_weights
from .result_view import qimage_to_pil

CHECKPOINT_SUFFIXES = (".safetensors",)  # what the app imports (pickles only through the CLI)
CHECKPOINT_FILTER = "Checkpoints (*.safetensors)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
WHAT_TO_DROP = (
    "Drop an image to start from it, a PNG with generation parameters to restore them, "
    "a .safetensors checkpoint to import it, or a LoRA, embedding, VAE or upscaler model to add it to the library."
)


class DropKind(Enum):
    IMAGE = "image"
    PARAMETERS = "parameters"  # an image with generation parameters
    CHECKPOINT = "checkpoint"
    RESOURCE = "resource"  # a LoRA, embedding, VAE or upscaler model for the library
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class DropItem:
    kind: DropKind
    path: Path | None = None
    image: Image.Image | None = None
    infotext: str | None = None
    parameters: Infotext | None = None  # the infotext parsed, on the worker thread like the file read
    message: str = ""  # why it is unsupported, or a note (e.g. extra files ignored)
    resource: str = ""  # RESOURCE: the library folder it belongs in (one of RESOURCE_KINDS)

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "the image"


def classify_file(path: Path, allow_pickle: bool = False) -> DropItem:
    """What the file at `path` is; a small pickle is unpickled (weights only) to see only with `allow_pickle`."""
    path = Path(path)
    if not path.exists():
        return DropItem(DropKind.UNSUPPORTED, path, message=f"{path} does not exist (was it moved or deleted?).")
    if path.is_dir():
        if (path / MODEL_INDEX).is_file():  # a diffusers model folder
            return DropItem(DropKind.CHECKPOINT, path)
        return DropItem(DropKind.UNSUPPORTED, path, message=f"{path.name} is a folder. {WHAT_TO_DROP}")
    suffix = path.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES or suffix in PICKLE_SUFFIXES:
        try:
            kind = classify_weights(path, allow_pickle)
        except PicklesNotAllowed as exc:
            return DropItem(DropKind.UNSUPPORTED, path, message=str(exc))
        except LibraryImportError as exc:
            if suffix in CHECKPOINT_SUFFIXES:
                return DropItem(DropKind.UNSUPPORTED, path, message=str(exc))
            kind = ""  # an unreadable pickle: refused below like any pickle checkpoint
        if kind in RESOURCE_KINDS:
            if suffix not in SUFFIXES[kind]:
                return DropItem(DropKind.UNSUPPORTED, path, message=(
                    f"{path.name} is a {LABELS[kind]}, but the library uses {LABELS[kind]} files ending in "
                    f"{', '.join(SUFFIXES[kind])}; rename it if you trust it, then drop it again."
                ))
            return DropItem(DropKind.RESOURCE, path, resource=kind)
    if suffix in CHECKPOINT_SUFFIXES:
        return DropItem(DropKind.CHECKPOINT, path)
    if suffix in PICKLE_SUFFIXES:
        return DropItem(
            DropKind.UNSUPPORTED, path,
            message=(
                f"{path.name} is a pickle checkpoint, which can run code when it is opened, so the app does "
                "not import it. Use a .safetensors version, or convert it in a terminal with "
                "`mlx-sd convert --allow-pickle` if you trust where it came from."
            ),
        )
    try:
        image, infotext = open_image(path)
    except UNDECODABLE as exc:
        if suffix in IMAGE_SUFFIXES:
            return DropItem(DropKind.UNSUPPORTED, path, message=f"{path.name} could not be read as an image: {exc}")
        return DropItem(DropKind.UNSUPPORTED, path, message=f"{path.name} is not an image or a checkpoint. {WHAT_TO_DROP}")
    if infotext and infotext.strip():
        return DropItem(DropKind.PARAMETERS, path, image, infotext, parse_infotext(infotext))
    return DropItem(DropKind.IMAGE, path, image)


@dataclass(frozen=True)
class DropSource:
    """What was dropped or pasted, taken from the QMimeData on the UI thread (which owns it)."""

    paths: tuple[Path, ...] = ()  # local files
    url_count: int = 0  # all URLs, local or not
    first_url: str = ""
    image: Image.Image | None = None  # image data without a file


def source_of(mime: QMimeData) -> DropSource:
    """Files win over image data (a browser drag carries both; the file has the metadata)."""
    if mime.hasUrls():
        urls = mime.urls()
        local = tuple(Path(url.toLocalFile()) for url in urls if url.isLocalFile())
        return DropSource(local, len(urls), urls[0].toString() if urls else "")
    if mime.hasImage():
        image = mime.imageData()
        if isinstance(image, QImage) and not image.isNull():
            return DropSource(image=qimage_to_pil(image))
    return DropSource()


def classify_source(source: DropSource, allow_pickle: bool = False) -> DropItem:
    """What a drop is; reads files, so it runs on a worker thread in the app."""
    if source.url_count:
        if not source.paths:
            return DropItem(
                DropKind.UNSUPPORTED,
                message=f"{source.first_url} is not a file on this computer; save it first, then drop the file.",
            )
        item = classify_file(source.paths[0], allow_pickle)
        if source.url_count > 1 and item.kind is not DropKind.UNSUPPORTED:
            return dataclasses.replace(item, message=f"Used {item.name}; drop one file at a time.")
        return item
    if source.image is not None:
        return DropItem(DropKind.IMAGE, image=source.image)
    return DropItem(DropKind.UNSUPPORTED, message=f"Nothing usable was dropped. {WHAT_TO_DROP}")


def accepts(mime: QMimeData) -> bool:
    """Files and images are ours; plain text is left to the text boxes."""
    return mime.hasUrls() or mime.hasImage()


class _Classified(QObject):
    """Carries one worker's result back: emitted on the worker thread, received on the UI thread."""

    done = Signal(object)  # DropItem


class _ClassifyJob(QRunnable):
    def __init__(self, source: DropSource, allow_pickle: bool, signals: _Classified):
        super().__init__()
        self.source = source
        self.allow_pickle = allow_pickle
        self.signals = signals

    def run(self) -> None:
        self.signals.done.emit(classify_source(self.source, self.allow_pickle))


class DropFilter(QObject):
    """Install on the window and on child widgets that would otherwise take the drop themselves
    (text boxes take file drops as text). `classify(mime)` reads a paste the same way."""

    dropped = Signal(object)  # DropItem, on the UI thread once the worker has read the drop

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)  # one drop at a time: results arrive in the order dropped
        self._pending: set[_Classified] = set()  # alive until their result is delivered
        self.allow_pickle = False  # Settings > Allow pickle files: small pickles are unpickled to see what they are

    def classify(self, mime: QMimeData) -> None:
        """Read what `mime` holds on a worker thread; `dropped` is emitted with the result."""
        signals = _Classified()
        signals.done.connect(self._deliver)  # queued: this object lives on the UI thread
        self._pending.add(signals)
        self._pool.start(_ClassifyJob(source_of(mime), self.allow_pickle, signals))

    @Slot(object)
    def _deliver(self, item: DropItem) -> None:
        self._pending.discard(self.sender())  # type: ignore[arg-type]
        self.dropped.emit(item)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind in (QEvent.Type.DragEnter, QEvent.Type.DragMove) and isinstance(event, (QDragEnterEvent, QDragMoveEvent)):
            if accepts(event.mimeData()):
                event.acceptProposedAction()
                return True
        elif kind == QEvent.Type.Drop and isinstance(event, QDropEvent) and accepts(event.mimeData()):
            event.acceptProposedAction()
            self.classify(event.mimeData())
            return True
        return False
