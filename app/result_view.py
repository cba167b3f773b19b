"""The result area: the selected image large, a strip of the whole batch, the live preview while
sampling, and the actions on a result (save as PNG/JPEG/WebP with metadata, copy, reveal, upscale).

Upscaling (nearest, bilinear, bicubic, Lanczos, or an upscaler model of the library's `upscalers/`;
1-4x) applies to what is shown and to what is saved or copied: what you see is what you export. A model
runs on the generation thread (app.upscale_control), its Stop button counting the tiles; until it is done
the picture shows resampled and cannot be saved or copied. `MessageBar` is the in-window banner for
errors and offers.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PIL import Image
from PySide6.QtCore import QAbstractListModel, QEvent, QModelIndex, QObject, QPersistentModelIndex, QRect, QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QGuiApplication, QImage, QMouseEvent, QPainter, QPaintEvent
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from cli.upscale import add_postprocess
from mlx_sd.image_metadata import FORMATS, ImageMetadataError, save_image
from mlx_sd.upscalers import DEFAULT_TILE

from .upscale_control import ModelUpscaler

UPSCALE_FILTERS: dict[str, Image.Resampling] = {
    "Nearest": Image.Resampling.NEAREST,
    "Bilinear": Image.Resampling.BILINEAR,
    "Bicubic": Image.Resampling.BICUBIC,
    "Lanczos": Image.Resampling.LANCZOS,
}
UPSCALE_FACTORS = (1, 2, 3, 4)
METHOD_MAX_WIDTH = 170  # pixels; a longer upscaler name is elided in the box, whole in its list
INFO_SECONDS = 10
NEAREST_FROM = 3  # on-screen enlargement from which pixels are shown as crisp squares
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
    """The images of the last run, one row each."""

    SeedRole = Qt.ItemDataRole.UserRole + 1
    InfotextRole = Qt.ItemDataRole.UserRole + 2
    PathRole = Qt.ItemDataRole.UserRole + 3

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._items: list[ResultItem] = []

    def rowCount(self, parent: Index = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._items)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._items):
            return None
        item = self._items[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return f"Seed {item.seed}"
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

    def set_items(self, items: list[ResultItem]) -> None:
        self.beginResetModel()
        self._items = list(items)
        self.endResetModel()

    def item(self, row: int) -> ResultItem:
        return self._items[row]


# -- widgets ----------------------------------------------------------------------------------


class ImageCanvas(QWidget):
    """Draws the result (or a whole batch as a grid), or a placeholder text.

    "Fit" scales the image to the view, enlarging small ones (nearest-neighbour once enlarged by
    NEAREST_FROM or more, so a 64 px image shows crisp pixels rather than blur); "100%" shows it at its
    upscaled size, scrolled by the surrounding scroll area when larger. Each image is resampled once,
    straight to the size on screen, with the chosen filter: a 4x Lanczos view of a 1024 px image never
    builds the 4096 px image. A live preview (a QImage) stands for the final image at its size."""

    clicked = Signal(int)  # the grid cell's row

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._preview: QImage | None = None
        self._pictures: list[Image.Image] = []
        self._factor = 1
        self._method = "Lanczos"
        self._natural = QSize()
        self._fit = True
        self._shown: dict[int, tuple[tuple[int, int, int, str], QImage]] = {}  # row -> (key, image)
        self._placeholder = ""
        self.setMinimumSize(160, 120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAccessibleName("Result image")

    def sizeHint(self) -> QSize:
        return QSize(640, 640)

    def set_pictures(self, pictures: list[Image.Image], factor: int = 1, method: str = "Lanczos") -> None:
        """Several results (a batch) side by side in a grid, or one, upscaled by `factor` with `method`
        (see UPSCALE_FILTERS)."""
        self._preview, self._pictures, self._factor, self._method = None, list(pictures), factor, method
        first = pictures[0] if pictures else None
        self._natural = QSize(first.width * factor, first.height * factor) if first is not None else QSize()
        self._shown = {}
        self._update_minimum()
        self.update()

    def set_preview(self, preview: QImage, final_size: QSize) -> None:
        self._preview, self._pictures, self._natural = preview, [], final_size
        self._update_minimum()
        self.update()

    def set_placeholder(self, text: str) -> None:
        self._placeholder = text
        self.update()

    def set_fit(self, fit: bool) -> None:
        self._fit = fit
        self._update_minimum()
        self.update()

    def _update_minimum(self) -> None:
        # at 100% the canvas is as large as the image, so its scroll area scrolls
        single = len(self._pictures) <= 1
        natural = self._natural if (not self._fit and single and not self._natural.isEmpty()) else QSize(160, 120)
        self.setMinimumSize(natural)

    def cells(self) -> list[QRect]:
        """The grid's cells, one per picture (a single picture fills the canvas)."""
        count = max(len(self._pictures), 1)
        aspect = self._aspect()

        def image_width(columns: int) -> float:  # how large each image is drawn with this many columns
            cell_width, cell_height = self.width() / columns, self.height() / math.ceil(count / columns)
            return min(cell_width, cell_height * aspect)

        columns = max(range(1, count + 1), key=image_width)  # the fewest columns among the best
        rows = math.ceil(count / columns)
        width, height = self.width() // columns, self.height() // rows
        return [QRect((i % columns) * width, (i // columns) * height, width, height) for i in range(count)]

    def _aspect(self) -> float:
        return self._natural.width() / self._natural.height() if not self._natural.isEmpty() else 1.0

    def image_rects(self) -> list[QRect]:
        """Where each image is drawn, in widget coordinates (none without an image)."""
        if (self._preview is None and not self._pictures) or self._natural.isEmpty():
            return []
        rects = []
        gap = 4 if len(self._pictures) > 1 else 0
        for cell in self.cells():
            cell = cell.adjusted(gap, gap, -gap, -gap)
            size = self._natural
            if self._fit or len(self._pictures) > 1:
                size = size.scaled(cell.size(), Qt.AspectRatioMode.KeepAspectRatio)
            x, y = cell.x() + (cell.width() - size.width()) // 2, cell.y() + (cell.height() - size.height()) // 2
            rects.append(QRect(max(x, 0), max(y, 0), size.width(), size.height()))
        return rects

    def image_rect(self) -> QRect:
        """Where the (first) image is drawn, in widget coordinates (empty without an image)."""
        rects = self.image_rects()
        return rects[0] if rects else QRect()

    def _shown_picture(self, row: int, size: QSize) -> QImage:
        picture = self._pictures[row]
        key = (id(picture), size.width(), size.height(), self._method)
        if row not in self._shown or self._shown[row][0] != key:
            scale = size.width() / picture.width
            if scale >= NEAREST_FROM * self._factor:
                resample = Image.Resampling.NEAREST  # enlarged for the screen far beyond the chosen upscale
            elif scale > 1:
                resample = UPSCALE_FILTERS[self._method]
            else:  # shrinking: the upscaler choice is about adding pixels, not dropping them
                resample = Image.Resampling.LANCZOS
            if (size.width(), size.height()) != picture.size:
                picture = picture.resize((size.width(), size.height()), resample)
            self._shown[row] = (key, pil_to_qimage(picture))
        return self._shown[row][1]

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().dark())
        rects = self.image_rects()
        if not rects:
            painter.setPen(self.palette().brightText().color())
            flags = Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap
            painter.drawText(self.rect().adjusted(24, 24, -24, -24), flags, self._placeholder)
        elif self._pictures:
            for row, rect in enumerate(rects):
                painter.drawImage(rect.topLeft(), self._shown_picture(row, rect.size()))
        elif self._preview is not None:
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            painter.drawImage(rects[0], self._preview)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if len(self._pictures) > 1 and event.button() == Qt.MouseButton.LeftButton:
            for row, rect in enumerate(self.image_rects()):
                if rect.contains(event.position().toPoint()):
                    self.clicked.emit(row)
                    return
        super().mouseReleaseEvent(event)


class MessageBar(QFrame):
    """A banner over the top of the result: an error, an offer with buttons, or news (which hides itself
    after INFO_SECONDS). Closing it hides it. It floats over its host (`float_over`) rather than taking a
    place in a layout, so its coming and going never moves a control under the pointer."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("messageBar")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAutoFillBackground(True)  # floating over the image, it must be opaque
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
        self._top: Callable[[], int] = lambda: 0
        self._expiry = QTimer(self, singleShot=True, interval=INFO_SECONDS * 1000)
        self._expiry.timeout.connect(self.dismiss)
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
        self._place()
        # news goes away by itself; an error, or an offer waiting for an answer, stays until dealt with
        if kind == "info" and not actions:
            self._expiry.start()
        else:
            self._expiry.stop()

    def float_over(self, host: QWidget, top: Callable[[], int] = lambda: 0) -> None:
        """Float over `host`, `top()` pixels from its top edge, across its width."""
        self.setParent(host)
        self._top = top
        host.installEventFilter(self)
        self.hide()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.parentWidget() and event.type() == QEvent.Type.Resize and self.isVisible():
            self._place()
        return False

    def _place(self) -> None:
        host = self.parentWidget()
        if host is None:
            return
        width, layout = host.width(), self.layout()
        # as tall as its wrapped text needs at this width
        height = layout.totalHeightForWidth(width) if layout.hasHeightForWidth() else layout.totalMinimumSize().height()
        self.setGeometry(0, self._top(), width, height)
        self.raise_()

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
    """The result large (a batch as a grid: click an image to see it alone), fit or 100% zoom, the
    actions and upscaling controls."""

    error = Signal(str, str)  # title, detail
    info = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.model = ResultsModel(self)
        self.canvas = ImageCanvas()
        self.canvas.clicked.connect(self.select)
        self.scroll = QScrollArea()  # scrolls a 100% view larger than the window
        self.scroll.setWidget(self.canvas)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.fit_button = QToolButton()
        self.fit_button.setText("Fit")
        self.fit_button.setToolTip("Scale the image to the view")
        self.actual_button = QToolButton()
        self.actual_button.setText("100%")
        self.actual_button.setToolTip("Show the image's own pixels, one to one")
        self.zoom_group = QButtonGroup(self)
        for button in (self.fit_button, self.actual_button):
            button.setCheckable(True)
            self.zoom_group.addButton(button)
        self.fit_button.setChecked(True)
        self.fit_button.toggled.connect(self.canvas.set_fit)
        self.grid_button = QToolButton()
        self.grid_button.setText("Batch")
        self.grid_button.setToolTip("See the whole batch side by side")
        self.grid_button.clicked.connect(self.show_grid)

        self.factor = QComboBox()
        self.factor.addItems([f"{f}x" for f in UPSCALE_FACTORS])
        self.factor.setToolTip("Upscale what is shown, saved and copied")
        self.method = QComboBox()
        self.method.addItems(list(UPSCALE_FILTERS))
        self.method.setCurrentText("Lanczos")
        self.method.setToolTip("Upscaling filter, or an upscaler model of the library")
        # as wide as the longest model name, within reason: the toolbar must fit a 1024-pixel screen
        self.method.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.method.setMaximumWidth(METHOD_MAX_WIDTH)
        for combo in (self.factor, self.method):
            combo.currentIndexChanged.connect(lambda _: self._refresh())
        self.upscale_tile = DEFAULT_TILE  # the models' tile size (Settings)
        self.model_upscaler: ModelUpscaler | None = None
        self._models: dict[str, Path] = {}  # the library's upscaler models by name
        self._upscaled: dict[tuple[int, int, str], Image.Image] = {}  # (id of the item, factor, model) -> result
        # shown while a model runs, counting its tiles (the toolbar has no room for a bar at 1024 pixels)
        self.upscale_stop = QToolButton(text="Stop")
        self.upscale_stop.setToolTip("Stop the upscaler model")
        self.upscale_stop.setAccessibleName("Stop upscaling")
        self.upscale_stop.clicked.connect(self._stop_upscale)
        self.save_button = QToolButton(text="Save…")
        self.save_button.clicked.connect(self.save_current_as)
        self.copy_button = QToolButton(text="Copy")
        self.copy_button.clicked.connect(self.copy_current)
        self.reveal_button = QToolButton(text="Show in Folder" if sys.platform != "darwin" else "Show in Finder")
        self.reveal_button.clicked.connect(self.reveal_current)

        self.factor.setAccessibleName("Upscale factor")
        self.method.setAccessibleName("Upscaling filter")
        actions = QHBoxLayout()
        for button in (self.fit_button, self.actual_button, self.grid_button):
            actions.addWidget(button)
        upscale_label = QLabel("Upscale")
        upscale_label.setBuddy(self.factor)
        actions.addWidget(upscale_label)
        actions.addWidget(self.factor)
        actions.addWidget(self.method)
        actions.addWidget(self.upscale_stop)
        actions.addStretch(1)
        for button in (self.save_button, self.copy_button, self.reveal_button):
            actions.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.scroll, 1)
        layout.addLayout(actions)

        self.output_format = "png"
        self._row = -1
        self._grid = False
        self._previewing = False
        self._save_folder = Path.home()
        self._update_actions()

    # -- showing ------------------------------------------------------------------------------

    def set_results(self, items: list[ResultItem]) -> None:
        self._previewing = False
        self._upscaled = {}
        self.model.set_items(items)
        self._row = 0 if items else -1
        self._grid = len(items) > 1
        self._refresh()

    def show_preview(self, image: QImage, final_size: QSize) -> None:
        """A live preview stands in for the coming image at its final size."""
        self._previewing = True
        self.canvas.set_preview(image, final_size)

    def end_preview(self) -> None:
        """Back to the current result (a cancelled or failed run leaves the previous results)."""
        self._previewing = False
        self._refresh()

    def select(self, row: int) -> None:
        """Show one image of the batch alone (the one the actions apply to)."""
        if 0 <= row < self.model.rowCount():
            self._row = row
            self._grid = False
            self._refresh()

    def show_grid(self) -> None:
        """The whole batch side by side."""
        if self.model.rowCount() > 1:
            self._grid = True
            self._refresh()

    def showing_grid(self) -> bool:
        return self._grid

    def _refresh(self) -> None:
        if self._previewing:
            return
        if self._grid:
            pictures = [self.model.item(row).image for row in range(self.model.rowCount())]
        else:
            item = self.current_item()
            pictures = [item.image] if item else []
        factor, method = self.upscale_settings()
        if method in self._models:
            upscaled = self._model_result(start=not self._grid)
            # until the model is done, the picture shows resampled (a model is too slow for every view)
            pictures, factor, method = ([upscaled], 1, "Lanczos") if upscaled is not None else (pictures, factor, "Lanczos")
        self.canvas.set_pictures(pictures, factor, method)
        self._update_actions()

    def _update_actions(self) -> None:
        item = self.current_item()
        self.grid_button.setVisible(self.model.rowCount() > 1)
        self.grid_button.setEnabled(not self._grid)
        waiting = self.upscaling()
        for button in (self.save_button, self.copy_button):
            button.setEnabled(item is not None and not waiting)
        self.reveal_button.setEnabled(item is not None and item.path is not None)
        self.upscale_stop.setVisible(waiting)

    # -- upscaler models --------------------------------------------------------------------------

    def set_upscalers(self, models: dict[str, Path]) -> None:
        """List the library's upscaler models after the filters (keeping the choice when it remains)."""
        chosen = self.method.currentText()
        self._models = dict(models)
        self.method.blockSignals(True)
        self.method.clear()
        self.method.addItems(list(UPSCALE_FILTERS))
        if models:
            self.method.insertSeparator(self.method.count())
            for name, path in models.items():
                self.method.addItem(name)
                self.method.setItemData(self.method.count() - 1, str(path), Qt.ItemDataRole.ToolTipRole)
        self.method.setCurrentText(chosen if chosen in UPSCALE_FILTERS or chosen in models else "Lanczos")
        self.method.blockSignals(False)
        self._refresh()

    def set_model_upscaler(self, upscaler: ModelUpscaler) -> None:
        """Where upscaler models run (the window's: on its generation thread)."""
        self.model_upscaler = upscaler
        upscaler.progressed.connect(self._on_upscale_progress)
        upscaler.finished.connect(self._on_upscaled)
        upscaler.failed.connect(self._on_upscale_failed)
        upscaler.cancelled.connect(lambda key: self._update_actions())

    def _model_key(self) -> tuple[int, int, str] | None:
        item = self.current_item()
        factor, method = self.upscale_settings()
        if item is None or method not in self._models or factor == 1:
            return None
        return (id(item), factor, method)

    def upscaling(self) -> bool:
        """Whether the current result waits for an upscaler model."""
        key = self._model_key()
        return key is not None and key not in self._upscaled

    def _model_result(self, start: bool) -> Image.Image | None:
        """The current result upscaled by the chosen model; None while it runs (started when `start`)."""
        key, item = self._model_key(), self.current_item()
        if key is None or item is None:
            return item.image if item is not None and not self._grid else None
        if key in self._upscaled:
            return self._upscaled[key]
        runner = self.model_upscaler
        if start and runner is not None and runner.key != key:
            self.upscale_stop.setText("Stop")
            runner.start(key, item.image, key[1], self._models[key[2]], self.upscale_tile)
        return None

    def _on_upscale_progress(self, done: int, total: int) -> None:
        self.upscale_stop.setText(f"Stop {done}/{total}")

    def _on_upscaled(self, key: tuple[int, int, str], image: Image.Image) -> None:
        if any(id(self.model.item(row)) == key[0] for row in range(self.model.rowCount())):
            self._upscaled[key] = image
        if key == self._model_key():
            self.info.emit(f"Upscaled {key[1]}x with {key[2]}: {image.width} x {image.height}")
            self._refresh()

    def _on_upscale_failed(self, key: tuple[int, int, str], message: str) -> None:
        if key == self._model_key():
            self.method.setCurrentText("Lanczos")
            self.error.emit(f"The upscaler model {key[2]} could not be used", message)
        self._update_actions()

    def _stop_upscale(self) -> None:
        """Stop the model and go back to no upscaling."""
        if self.model_upscaler is not None:
            self.model_upscaler.cancel()
        self.factor.setCurrentIndex(0)

    # -- the current result ---------------------------------------------------------------------

    def current_item(self) -> ResultItem | None:
        return self.model.item(self._row) if 0 <= self._row < self.model.rowCount() else None

    def upscale_settings(self) -> tuple[int, str]:
        return UPSCALE_FACTORS[self.factor.currentIndex()], self.method.currentText()

    def display_image(self) -> Image.Image:
        item = self.current_item()
        if item is None:
            raise LookupError("there is no result to show")
        factor, method = self.upscale_settings()
        if method in self._models:
            upscaled = self._model_result(start=True)
            if upscaled is None:
                raise LookupError(f"the upscale with {method} is still running")
            return upscaled
        return upscale(item.image, factor, method)

    def save_current(self, path: str | Path) -> Path:
        """Save the current result (upscaled as shown) with its infotext; the suffix picks the format."""
        item = self.current_item()
        if item is None:
            raise LookupError("there is no result to save")
        factor, method = self.upscale_settings()
        infotext = add_postprocess(item.infotext, method, factor) if factor > 1 else item.infotext
        return save_image(self.display_image(), path, infotext)

    def default_save_path(self) -> Path:
        item = self.current_item()
        seed = item.seed if item else 0
        return self._save_folder / f"mlx-sd-{seed}{SUFFIX_FOR.get(self.output_format, '.png')}"

    def save_current_as(self) -> None:
        if self.current_item() is None or self._still_upscaling():
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

    def _still_upscaling(self) -> bool:
        if self.upscaling():
            self.info.emit("The upscaler model is still running; save or copy when it is done")
        return self.upscaling()

    def copy_current(self) -> None:
        if self.current_item() is not None and not self._still_upscaling():
            QGuiApplication.clipboard().setImage(pil_to_qimage(self.display_image()))
            self.info.emit("Copied the image to the clipboard")

    def reveal_current(self) -> None:
        item = self.current_item()
        if item is not None and item.path is not None:
            reveal(item.path)
