"""The "Blend" tab: several prompts, each with an opacity slider, drawn as one image.

When "Draw the blend" is on, Generate uses `p1 :o1 AND p2 :o2 ...` instead of the prompt box: the
opacities become composable-diffusion weights, or (Embedding) weights of one interpolated encoding,
scaled to sum to 1 so that opacities say how much of each prompt, not how strong the whole is.
Rows with an empty prompt or zero opacity are left out.

Restoring a request (a dropped image's parameters, a history entry) whose prompt is such a blend
(composable weights from 0 to 1 summing to 1, as this tab and `mlx-sd animate` write them) fills
the rows with its parts at their exact weights (until a slider moves) and turns the blend on; any
other prompt turns it off, so that the restored prompt box is what Generate draws.
"""

from __future__ import annotations

import dataclasses

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from mlx_sd.composable import composed_prompt, prompt_parts
from mlx_sd.infotext import Infotext
from mlx_sd.request import GenerationRequest

BLEND_LABELS = {"weights": "Composable weights", "embedding": "Embedding interpolation"}
INITIAL_ROWS = 2
SUM_TOLERANCE = 1e-4  # weights written to 6 significant digits still sum to 1 within this


class BlendRow(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.prompt_edit = QLineEdit(placeholderText="a prompt")
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(100)
        self.opacity_label = QLabel("100%")
        self.opacity_label.setMinimumWidth(self.opacity_label.fontMetrics().horizontalAdvance("100%") + 4)
        self.exact_weight: float | None = None  # a restored weight the slider rounds, until the slider moves
        self.opacity.valueChanged.connect(self._on_opacity)
        self.remove_button = QPushButton("Remove")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.prompt_edit, 3)
        layout.addWidget(self.opacity, 2)
        layout.addWidget(self.opacity_label)
        layout.addWidget(self.remove_button)

    def _on_opacity(self, value: int) -> None:
        self.opacity_label.setText(f"{value}%")
        self.exact_weight = None

    def set_weight(self, weight: float) -> None:
        self.opacity.setValue(round(weight * 100))
        self.exact_weight = weight

    def amount(self) -> float:
        """The row's opacity in percent, exact when restored."""
        return self.opacity.value() if self.exact_weight is None else self.exact_weight * 100


class BlendPanel(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.enabled_check = QCheckBox("Draw the blend (instead of the prompt box)")
        self.mode_combo = QComboBox()
        for name, label in BLEND_LABELS.items():
            self.mode_combo.addItem(label, name)
        self.add_button = QPushButton("Add prompt")
        self.add_button.clicked.connect(self.add_row)
        self.rows: list[BlendRow] = []
        self._rows_layout = QVBoxLayout()
        top = QHBoxLayout()
        top.addWidget(self.enabled_check, 1)
        top.addWidget(self.mode_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(self._rows_layout)
        layout.addWidget(self.add_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addStretch(1)
        for _ in range(INITIAL_ROWS):
            self.add_row()

    def add_row(self) -> BlendRow:
        row = BlendRow(self)
        row.remove_button.clicked.connect(lambda _=False, row=row: self.remove_row(row))
        self.rows.append(row)
        self._rows_layout.addWidget(row)
        return row

    def remove_row(self, row: BlendRow) -> None:
        self.rows.remove(row)
        row.setParent(None)
        row.deleteLater()

    def parts(self) -> list[tuple[str, float]]:
        """(prompt, weight) of the rows that count, weights scaled to sum to 1."""
        chosen = [(r.prompt_edit.text().strip(), r.amount()) for r in self.rows]
        chosen = [(text, opacity) for text, opacity in chosen if text and opacity > 0]
        total = sum(opacity for _, opacity in chosen)
        return [(text, opacity / total) for text, opacity in chosen]

    def blend_prompt(self) -> str:
        return composed_prompt(self.parts())

    def apply(self, request: GenerationRequest) -> GenerationRequest:
        """The request with the blend as its prompt when the blend is on and has a prompt."""
        if not self.enabled_check.isChecked() or not self.parts():
            return request
        return dataclasses.replace(request, prompt=self.blend_prompt(), and_blend=self.mode_combo.currentData())

    def restore(self, request: GenerationRequest, _info: Infotext | None) -> list[str]:
        """Show the request's blend in the rows and turn it on, or turn the blend off when its prompt
        is no blend; returns a note for the window's message."""
        parts = prompt_parts(request.prompt)
        weights = parts.weights
        if not parts.composable or min(weights) < 0 or abs(sum(weights) - 1) > SUM_TOLERANCE:
            was_on = self.enabled_check.isChecked()
            self.enabled_check.setChecked(False)
            return ["the Blend tab is turned off, so the prompt box is drawn"] if was_on else []
        for row in list(self.rows):
            self.remove_row(row)
        for text, weight in zip(parts.texts, weights):
            row = self.add_row()
            row.prompt_edit.setText(text.strip())
            row.set_weight(weight)
        self.mode_combo.setCurrentIndex(max(0, self.mode_combo.findData(request.and_blend)))
        self.enabled_check.setChecked(True)
        return [f"the blend of {len(weights)} prompts is in the Blend tab, turned on"]


def install_blend_panel(window) -> BlendPanel:
    """Add the Blend tab to the main window and have its requests pass through it."""
    panel = BlendPanel()
    window.add_panel("Blend", panel)
    window.request_transforms.append(panel.apply)
    window.restore_hooks.append(panel.restore)
    return panel
