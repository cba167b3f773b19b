"""What a file, image or clipboard content dropped on the window is, and the event filter that catches
drops anywhere on it.

- an image becomes the image-to-image source;
- an image carrying generation parameters (ours or A1111's) offers to restore them;
- a `.safetensors` checkpoint or a diffusers folder goes to the model import;
- anything else gets a message saying what can be dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QEvent, QMimeData, QObject, Signal
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent, QImage

from convert.diffusers_folder import MODEL_INDEX
from convert.pickle_file import PICKLE_SUFFIXES
from mlx_sd.image_metadata import UNDECODABLE, open_image

from .result_view import qimage_to_pil

CHECKPOINT_SUFFIXES = (".safetensors",)  # what the app imports (pickles only through the CLI)
CHECKPOINT_FILTER = "Checkpoints (*.safetensors)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
WHAT_TO_DROP = (
    "Drop an image to start from it, a PNG with generation parameters to restore them, "
    "or a .safetensors checkpoint to import it."
)


class DropKind(Enum):
    IMAGE = "image"
    PARAMETERS = "parameters"  # an image with generation parameters
    CHECKPOINT = "checkpoint"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class DropItem:
    kind: DropKind
    path: Path | None = None
    image: Image.Image | None = None
    infotext: str | None = None
    message: str = ""  # why it is unsupported, or a note (e.g. extra files ignored)

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "the image"


def classify_file(path: Path) -> DropItem:
    path = Path(path)
    if not path.exists():
        return DropItem(DropKind.UNSUPPORTED, path, message=f"{path} does not exist (was it moved or deleted?).")
    if path.is_dir():
        if (path / MODEL_INDEX).is_file():  # a diffusers model folder
            return DropItem(DropKind.CHECKPOINT, path)
        return DropItem(DropKind.UNSUPPORTED, path, message=f"{path.name} is a folder. {WHAT_TO_DROP}")
    suffix = path.suffix.lower()
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
        return DropItem(DropKind.PARAMETERS, path, image, infotext)
    return DropItem(DropKind.IMAGE, path, image)


def classify_mime(mime: QMimeData) -> DropItem:
    """Files win over image data (a browser drag carries both; the file has the metadata)."""
    if mime.hasUrls():
        urls = mime.urls()
        local = [url for url in urls if url.isLocalFile()]
        if not local:
            return DropItem(
                DropKind.UNSUPPORTED,
                message=f"{urls[0].toString()} is not a file on this computer; save it first, then drop the file.",
            )
        item = classify_file(Path(local[0].toLocalFile()))
        if len(urls) > 1 and item.kind is not DropKind.UNSUPPORTED:
            return DropItem(item.kind, item.path, item.image, item.infotext, f"Used {item.name}; drop one file at a time.")
        return item
    if mime.hasImage():
        image = mime.imageData()
        if isinstance(image, QImage) and not image.isNull():
            return DropItem(DropKind.IMAGE, image=qimage_to_pil(image))
    return DropItem(DropKind.UNSUPPORTED, message=f"Nothing usable was dropped. {WHAT_TO_DROP}")


def accepts(mime: QMimeData) -> bool:
    """Files and images are ours; plain text is left to the text boxes."""
    return mime.hasUrls() or mime.hasImage()


class DropFilter(QObject):
    """Install on the window and on child widgets that would otherwise take the drop themselves
    (text boxes take file drops as text)."""

    dropped = Signal(object)  # DropItem

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind in (QEvent.Type.DragEnter, QEvent.Type.DragMove) and isinstance(event, (QDragEnterEvent, QDragMoveEvent)):
            if accepts(event.mimeData()):
                event.acceptProposedAction()
                return True
        elif kind == QEvent.Type.Drop and isinstance(event, QDropEvent) and accepts(event.mimeData()):
            event.acceptProposedAction()
            self.dropped.emit(classify_mime(event.mimeData()))
            return True
        return False
