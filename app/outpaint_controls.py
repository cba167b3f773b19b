"""Outpainting from the result: buttons that extend one side of the shown picture by a chosen number
of pixels. The picture becomes the init image and the engine grows its canvas and paints the new
strip (mlx_sd.outpaint); prompt, seed, steps and strength are the window's, as for Generate."""

from __future__ import annotations

import dataclasses
import functools

from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QWidget


AMOUNTS = (64, 128, 256, 512)  # pixels, multiples of 8 as the engine wants
DEFAULT_AMOUNT = 128
SIDES = ("left", "right", "top", "bottom")  # the order of GenerationRequest.outpaint
LABELS = {"left": "◀ Left", "right": "Right ▶", "top": "▲ Top", "bottom": "Bottom ▼"}
NO_PICTURE_TEXT = "Generate a picture first: Extend grows the picture shown"


class OutpaintControls(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.amount = QComboBox()
        for pixels in AMOUNTS:
            self.amount.addItem(f"{pixels} px", pixels)
        self.amount.setCurrentIndex(AMOUNTS.index(DEFAULT_AMOUNT))
        self.amount.setAccessibleName("Extend by")
        self.buttons = {side: QPushButton(LABELS[side]) for side in SIDES}
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        label = QLabel("Extend")
        label.setBuddy(self.amount)
        layout.addWidget(label)
        for side in SIDES:
            self.buttons[side].setToolTip(f"Paint a new strip on the {side} of the picture (outpainting)")
            layout.addWidget(self.buttons[side])
        layout.addWidget(self.amount)
        layout.addStretch(1)

    def sides(self, side: str) -> tuple[int, int, int, int]:
        pixels = int(self.amount.currentData())
        return tuple(pixels if name == side else 0 for name in SIDES)  # type: ignore[return-value]


def extend(window, controls: OutpaintControls, side: str):  # window: app.main_window.MainWindow
    """Start the outpainting run for `side`, or say why there is none."""
    item = window.result_view.current_item()
    if item is None:
        window.statusBar().showMessage(NO_PICTURE_TEXT, 5000)
        return None
    width, height = item.image.size
    change = functools.partial(
        dataclasses.replace,
        init_image=item.image, width=width, height=height, mask=None, outpaint=controls.sides(side),
    )
    return window.generate_with(change)


def install_outpaint_controls(window) -> OutpaintControls:
    """Put the Extend buttons under the result and connect them."""
    controls = OutpaintControls()
    window.result_view.layout().addWidget(controls)
    for side, button in controls.buttons.items():
        button.clicked.connect(lambda _=False, side=side: extend(window, controls, side))
    return controls
