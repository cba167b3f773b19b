"""The result area: the selected image large, a strip of the whole batch, the live preview while
sampling, and the actions on a result (save as PNG/JPEG/WebP with metadata, copy, reveal, upscale).

Upscaling (nearest, bilinear, bicubic, Lanczos; 1-4x) applies to what is shown and to what is saved
or copied: what you see is what you export. `MessageBar` is the in-window banner for errors and offers.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PIL import Image
from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, QRect, QSize, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QGuiApplication, QIcon, QImage, QPainter, QPaintEvent, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListView,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from mlx_sd.image_metadata import FORMATS, ImageMetadataError, save_image

UPSCALE_FILTERS: dict[str, Image.Resampling] = {
    "Nearest": Image.Resampling.NEAREST,
    "Bilinear": Image.Resampling.BILINEAR,
    "Bicubic": Image.Resampling.BICUBIC,
    "Lanczos": Image.Resampling.LANCZOS,
}
UPSCALE_FACTORS = (1, 2, 3, 4)
THUMBNAIL_SIDE = 96
SAVE_FILTERS = {"png": "PNG image (*.png)", "jpeg": "JPEG image (*.jpg *.jpeg)", "webp": "WebP image (*.webp)"}
SUFFIX_FOR = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}

Index = QModelIndex | QPersistentModelIndex


# -- PIL <-> Qt ------------------------------------------------------------------------------


def pil_to_qimage(image: Image.Image) -> QImage:
    """A QImage owning its own copy of the pixels (safe to send between threads)."""
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    fmt = QImage.Format.Format_RGBA8888 if image.mode == "RGBA" else QImage.Format.Format_RGB888
    data = image.tobytes()
    return QImage(data, image.width, image.height, image.width * len(image.mode), fmt).copy()


def qimage_to_pil(qimage: QImage) -> Image.Image:
    """RGB, or RGBA when the QImage has an alpha channel."""
    converted = qimage.convertToFormat(QImage.Format.Format_RGBA8888)
    data = bytes(converted.constBits())[: converted.sizeInBytes()]
    image = Image.frombuffer("RGBA", (converted.width(), converted.height()), data, "raw", "RGBA", converted.bytesPerLine(), 1)
    return image.copy() if qimage.hasAlphaChannel() else image.convert("RGB")


# -- upscaling and the file actions, Qt-free ------------------------------------------------


def upscale(image: Image.Image, factor: int, method: str) -> Image.Image:
    if factor not in UPSCALE_FACTORS:
        raise ValueError(f"upscale factor must be one of {UPSCALE_FACTORS}, got {factor}")
    if method not in UPSCALE_FILTERS:
        raise ValueError(f"upscale filter must be one of {', '.join(UPSCALE_FILTERS)}, got {method!r}")
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), UPSCALE_FILTERS[method])


def postprocess_infotext(infotext: str, factor: int, method: str) -> str:
    """The infotext of an upscaled export: A1111's extras keys appended to the parameter line."""
    if factor == 1 or not infotext:
        return infotext
    return f"{infotext}, Postprocess upscale by: {factor}, Postprocess upscaler: {method}"


def reveal_command(path: Path, platform: str = sys.platform) -> list[str] | None:
    """The command that shows `path` selected in the file manager, or None where only its folder can
    be opened (Linux file managers differ)."""
    if platform == "darwin":
        return ["open", "-R", str(path)]
    if platform.startswith("win"):
        return ["explorer", f"/select,{path}"]
    return None


def reveal(path: Path) -> None:
    command = reveal_command(path)
    if command is None:
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(path.parent)))
    else:
        subprocess.Popen(command)  # noqa: S603 - fixed program, the path is one argument


# -- the batch as a list model ----------------------------------------------------------------


@dataclass(frozen=True)
class ResultItem:
    image: Image.Image
    seed: int
    infotext: str
    path: Path | None = None  # the image's file in the history, once recorded


class ResultsModel(QAbstractListModel):
    """The images of the last run, one row each, with thumbnails made on first display."""

    SeedRole = Qt.ItemDataRole.UserRole + 1
    InfotextRole = Qt.ItemDataRole.UserRole + 2
    PathRole = Qt.ItemDataRole.UserRole + 3

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._items: list[ResultItem] = []
        self._icons: dict[int, QIcon] = {}

    def rowCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._items)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._items):
            return None
        item = self._items[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return f"Seed {item.seed}"
        if role == Qt.ItemDataRole.DecorationRole:
            return self._icon(index.row())
        if role == Qt.ItemDataRole.ToolTipRole or role == self.InfotextRole:
            return item.infotext
        if role == self.SeedRole:
            return item.seed
        if role == self.PathRole:
            return str(item.path) if item.path else None
        return None

    def roleNames(self) -> dict[int, bytes]:
        return {
            **super().roleNames(),
            self.SeedRole: b"seed",
            self.InfotextRole: b"infotext",
            self.PathRole: b"path",
        }

    def _icon(self, row: int) -> QIcon:
        if row not in self._icons:
            thumb = self._items[row].image.copy()
            thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
            self._icons[row] = QIcon(QPixmap.fromImage(pil_to_qimage(thumb)))
        return self._icons[row]

    def set_items(self, items: list[ResultItem]) -> None:
        self.beginResetModel()
        self._items = list(items)
        self._icons = {}
        self.endResetModel()

    def item(self, row: int) -> ResultItem:
        return self._items[row]


# -- widgets ----------------------------------------------------------------------------------


class ImageCanvas(QWidget):
    """Draws one image as large as fits, or a placeholder text.

    A result is shown at its upscaled size (never enlarged beyond it) and resampled once, straight to
    the size on screen, with the chosen filter: a 4x Lanczos view of a 1024 px image never builds the
    4096 px image. A live preview (a QImage) stands for the final image and is stretched to its size."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._preview: QImage | None = None
        self._picture: Image.Image | None = None
        self._method = "Lanczos"
        self._natural = QSize()
        self._shown: tuple[tuple[int, int, int, str], QImage] | None = None  # cache: (id, w, h, filter)
        self._placeholder = ""
        self.setMinimumSize(256, 256)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(640, 640)

    def set_picture(self, picture: Image.Image | None, factor: int = 1, method: str = "Lanczos") -> None:
        """A result, shown upscaled by `factor` with `method` (see UPSCALE_FILTERS)."""
        self._preview, self._picture, self._method = None, picture, method
        self._natural = QSize(picture.width * factor, picture.height * factor) if picture is not None else QSize()
        self.update()

    def set_preview(self, preview: QImage, final_size: QSize) -> None:
        self._preview, self._picture, self._natural = preview, None, final_size
        self.update()

    def set_placeholder(self, text: str) -> None:
        self._placeholder = text
        self.update()

    def image_rect(self) -> QRect:
        """Where the image is drawn, in widget coordinates (empty without an image)."""
        if (self._preview is None and self._picture is None) or self._natural.isEmpty():
            return QRect()
        size = self._natural
        if size.width() > self.width() or size.height() > self.height():
            size = size.scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
        x, y = (self.width() - size.width()) // 2, (self.height() - size.height()) // 2
        return QRect(x, y, size.width(), size.height())

    def _shown_picture(self, size: QSize) -> QImage:
        assert self._picture is not None
        key = (id(self._picture), size.width(), size.height(), self._method)
        if self._shown is None or self._shown[0] != key:
            enlarging = size.width() > self._picture.width
            # shrinking always uses Lanczos: the upscaler choice is about adding pixels, not dropping them
            resample = UPSCALE_FILTERS[self._method] if enlarging else Image.Resampling.LANCZOS
            picture = self._picture
            if (size.width(), size.height()) != picture.size:
                picture = picture.resize((size.width(), size.height()), resample)
            self._shown = (key, pil_to_qimage(picture))
        return self._shown[1]

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().dark())
        rect = self.image_rect()
        if rect.isEmpty():
            painter.setPen(self.palette().brightText().color())
            flags = Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap
            painter.drawText(self.rect().adjusted(24, 24, -24, -24), flags, self._placeholder)
        elif self._picture is not None:
            painter.drawImage(rect.topLeft(), self._shown_picture(rect.size()))
        elif self._preview is not None:
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            painter.drawImage(rect, self._preview)


class MessageBar(QFrame):
    """A banner above the result: an error, or an offer with buttons. Closing it hides it."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("messageBar")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self._label = QLabel()
        self._label.setWordWrap(True)
        self._label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._buttons = QHBoxLayout()
        close = QToolButton()
        close.setText("✕")
        close.setToolTip("Dismiss")
        close.setAutoRaise(True)
        close.clicked.connect(self.dismiss)
        layout = QHBoxLayout(self)
        layout.addWidget(self._label, 1)
        layout.addLayout(self._buttons)
        layout.addWidget(close)
        self.kind = ""
        self.hide()

    def show_message(
        self, title: str, detail: str = "", kind: str = "info", actions: list[tuple[str, Callable[[], None]]] | None = None
    ) -> None:
        """kind: "info" or "error"; each action is (button label, callback), and dismisses the bar."""
        self.kind = kind
        colour = "#f8d7da" if kind == "error" else "#dbe9f7"
        self.setStyleSheet(f"#messageBar {{ background: {colour}; }} #messageBar QLabel {{ color: #1a1a1a; }}")
        self._label.setText(f"<b>{_escape(title)}</b>" + (f"<br>{_escape(detail)}" if detail else ""))
        while self._buttons.count():
            widget = self._buttons.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
        for label, callback in actions or []:
            button = QPushButton(label)
            button.clicked.connect(lambda _=False, c=callback: (self.dismiss(), c()))
            self._buttons.addWidget(button)
        self.show()

    def text(self) -> str:
        return self._label.text()

    def action_labels(self) -> list[str]:
        return [self._buttons.itemAt(i).widget().text() for i in range(self._buttons.count())]

    def trigger(self, label: str) -> None:
        for i in range(self._buttons.count()):
            button = self._buttons.itemAt(i).widget()
            if button.text() == label:
                button.click()
                return
        raise KeyError(f"no button {label!r} in the message bar; it has {self.action_labels()}")

    def dismiss(self) -> None:
        self.hide()
        self.kind = ""


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>")


class ResultView(QWidget):
    """The selected result large, the batch strip below, the actions and upscaling controls."""

    error = Signal(str, str)  # title, detail
    info = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.model = ResultsModel(self)
        self.canvas = ImageCanvas()
        self.strip = QListView()
        self.strip.setModel(self.model)
        self.strip.setViewMode(QListView.ViewMode.IconMode)
        self.strip.setFlow(QListView.Flow.LeftToRight)
        self.strip.setWrapping(False)
        self.strip.setIconSize(QSize(THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        self.strip.setFixedHeight(THUMBNAIL_SIDE + 44)
        self.strip.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.strip.selectionModel().currentChanged.connect(lambda current, _: self._show_row(current.row()))
        self.strip.hide()

        self.factor = QComboBox()
        self.factor.addItems([f"{f}x" for f in UPSCALE_FACTORS])
        self.factor.setToolTip("Upscale what is shown, saved and copied")
        self.method = QComboBox()
        self.method.addItems(list(UPSCALE_FILTERS))
        self.method.setCurrentText("Lanczos")
        self.method.setToolTip("Upscaling filter")
        for combo in (self.factor, self.method):
            combo.currentIndexChanged.connect(lambda _: self._refresh())
        self.save_button = QPushButton("Save…")
        self.save_button.clicked.connect(self.save_current_as)
        self.copy_button = QPushButton("Copy")
        self.copy_button.clicked.connect(self.copy_current)
        self.reveal_button = QPushButton("Show in Folder" if sys.platform != "darwin" else "Show in Finder")
        self.reveal_button.clicked.connect(self.reveal_current)

        actions = QHBoxLayout()
        actions.addWidget(QLabel("Upscale"))
        actions.addWidget(self.factor)
        actions.addWidget(self.method)
        actions.addStretch(1)
        for button in (self.save_button, self.copy_button, self.reveal_button):
            actions.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.strip)
        layout.addLayout(actions)

        self.output_format = "png"
        self._row = -1
        self._previewing = False
        self._save_folder = Path.home()
        self._update_actions()

    # -- showing ------------------------------------------------------------------------------

    def set_results(self, items: list[ResultItem]) -> None:
        self._previewing = False
        self.model.set_items(items)
        self.strip.setVisible(len(items) > 1)
        self._row = -1
        if items:
            self.strip.setCurrentIndex(self.model.index(0))
            self._show_row(0)
        else:
            self.canvas.set_picture(None)
        self._update_actions()

    def show_preview(self, image: QImage, final_size: QSize) -> None:
        """A live preview stands in for the coming image at its final size."""
        self._previewing = True
        self.canvas.set_preview(image, final_size)

    def end_preview(self) -> None:
        """Back to the current result (a cancelled or failed run leaves the previous results)."""
        self._previewing = False
        self._refresh()

    def select(self, row: int) -> None:
        self.strip.setCurrentIndex(self.model.index(row))

    def _show_row(self, row: int) -> None:
        if 0 <= row < self.model.rowCount():
            self._row = row
            self._refresh()

    def _refresh(self) -> None:
        if self._previewing:
            return
        item = self.current_item()
        self.canvas.set_picture(item.image if item else None, *self.upscale_settings())
        self._update_actions()

    def _update_actions(self) -> None:
        item = self.current_item()
        for button in (self.save_button, self.copy_button):
            button.setEnabled(item is not None)
        self.reveal_button.setEnabled(item is not None and item.path is not None)

    # -- the current result ---------------------------------------------------------------------

    def current_item(self) -> ResultItem | None:
        return self.model.item(self._row) if 0 <= self._row < self.model.rowCount() else None

    def upscale_settings(self) -> tuple[int, str]:
        return UPSCALE_FACTORS[self.factor.currentIndex()], self.method.currentText()

    def display_image(self) -> Image.Image:
        item = self.current_item()
        if item is None:
            raise LookupError("there is no result to show")
        return upscale(item.image, *self.upscale_settings())

    def save_current(self, path: str | Path) -> Path:
        """Save the current result (upscaled as shown) with its infotext; the suffix picks the format."""
        item = self.current_item()
        if item is None:
            raise LookupError("there is no result to save")
        factor, method = self.upscale_settings()
        return save_image(self.display_image(), path, postprocess_infotext(item.infotext, factor, method))

    def default_save_path(self) -> Path:
        item = self.current_item()
        seed = item.seed if item else 0
        return self._save_folder / f"mlx-sd-{seed}{SUFFIX_FOR.get(self.output_format, '.png')}"

    def save_current_as(self) -> None:
        if self.current_item() is None:
            return
        filters = [SAVE_FILTERS[self.output_format]] + [f for k, f in SAVE_FILTERS.items() if k != self.output_format]
        name, _ = QFileDialog.getSaveFileName(self, "Save Image", str(self.default_save_path()), ";;".join(filters))
        if not name:
            return
        path = Path(name)
        if path.suffix.lower() not in FORMATS:
            path = path.with_name(path.name + SUFFIX_FOR.get(self.output_format, ".png"))
        try:
            saved = self.save_current(path)
        except (ImageMetadataError, OSError) as exc:
            self.error.emit("The image could not be saved", str(exc))
            return
        self._save_folder = saved.parent
        self.info.emit(f"Saved {saved}")

    def copy_current(self) -> None:
        if self.current_item() is not None:
            QGuiApplication.clipboard().setImage(pil_to_qimage(self.display_image()))
            self.info.emit("Copied the image to the clipboard")

    def reveal_current(self) -> None:
        item = self.current_item()
        if item is not None and item.path is not None:
            reveal(item.path)
