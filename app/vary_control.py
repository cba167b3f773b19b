"""The result's Vary button: the shown picture's seed again with a fresh random variation seed, at
a small variation strength chosen beside it (A1111's variation seeds, mlx_sd.variation), so a
picture one likes comes back nudged. The other settings are the window's, as for Generate."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from PySide6.QtWidgets import QDoubleSpinBox, QHBoxLayout, QLabel, QPushButton, QWidget

from mlx_sd.generation import random_seed
from mlx_sd.request import GenerationRequest

DEFAULT_STRENGTH = 0.2
NO_PICTURE_TEXT = "Generate a picture first: Vary makes variations of the picture shown"


class VaryControl(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.button = QPushButton("Vary")
        self.button.setToolTip("The shown picture's seed with a new random variation seed")
        self.strength = QDoubleSpinBox()
        self.strength.setRange(0.01, 1.0)
        self.strength.setSingleStep(0.05)
        self.strength.setValue(DEFAULT_STRENGTH)
        self.strength.setToolTip("Variation strength: 0.1-0.3 nudges the picture, 1 is another picture")
        self.strength.setAccessibleName("Variation strength")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.button)
        label = QLabel("strength")
        label.setBuddy(self.strength)
        layout.addWidget(label)
        layout.addWidget(self.strength)
        layout.addStretch(1)

    def varied(self, seed: int) -> Callable[[GenerationRequest], GenerationRequest]:
        """The change that turns the window's request into a variation of the picture of `seed`."""
        return functools.partial(
            dataclasses.replace,
            seed=seed, variation_seed=random_seed(), variation_strength=round(self.strength.value(), 2),
            resize_seed_from=(0, 0),
        )


def vary(window, control: VaryControl):  # window: app.main_window.MainWindow
    """Start the variation run, or say why there is none."""
    item = window.result_view.current_item()
    if item is None:
        window.statusBar().showMessage(NO_PICTURE_TEXT, 5000)
        return None
    return window.generate_with(control.varied(item.seed))


def install_vary_control(window) -> VaryControl:
    """Put the Vary button under the result and connect it."""
    control = VaryControl()
    window.result_view.layout().addWidget(control)
    control.button.clicked.connect(lambda _=False: vary(window, control))
    return control
