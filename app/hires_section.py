"""The "Hires fix" section of the parameters panel: on/off, upscaler (latent modes, classic filters and
the library's upscaler models), upscale by a factor or to a size, second-pass steps and denoising
strength, as GenerationRequest's hires fields (mlx_sd.hires)."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QSpinBox, QWidget

from mlx_sd.hires import builtin_upscalers
from mlx_sd.request import MAX_SIZE, MAX_STEPS, GenerationRequest

DEFAULTS = GenerationRequest()
A1111_SCALE = 2.0  # the factor A1111 offers first
# The request fields this section sets, and that a dropped picture's infotext restores
HIRES_FIELDS = ("hires_scale", "hires_width", "hires_height", "hires_upscaler", "hires_steps", "hires_denoise")


class HiresSection(QWidget):
    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.enabled = QCheckBox("Upscale and refine")
        self.enabled.setToolTip("Generate at this size, upscale, then refine at the larger size (A1111's Hires. fix)")
        self.upscaler = QComboBox()
        self.upscaler.addItems(builtin_upscalers())
        self.upscaler.setToolTip("Latent modes resize the latents; Lanczos, Nearest and models resize the picture")
        self.scale = QDoubleSpinBox()
        self.scale.setRange(1.0, 4.0)
        self.scale.setSingleStep(0.25)
        self.scale.setDecimals(2)
        self.scale.setValue(A1111_SCALE)
        self.scale.setSuffix(" ×")
        self.width_spin = QSpinBox()
        self.height_spin = QSpinBox()
        for spin in (self.width_spin, self.height_spin):
            spin.setRange(0, MAX_SIZE)
            spin.setSingleStep(64)
            spin.setSpecialValueText("auto")
            spin.setToolTip("0 (auto): from the other side and the aspect ratio; both 0: upscale by the factor")
            spin.valueChanged.connect(self._update)
        self.steps = QSpinBox()
        self.steps.setRange(0, MAX_STEPS)
        self.steps.setSpecialValueText("same")
        self.steps.setToolTip("Steps of the second pass before the denoising strength applies; same = as the first")
        self.denoise = QDoubleSpinBox()
        self.denoise.setRange(0.0, 1.0)
        self.denoise.setSingleStep(0.05)
        self.denoise.setDecimals(2)
        self.denoise.setValue(DEFAULTS.hires_denoise)
        self.denoise.setToolTip("How much the second pass changes the upscaled picture")
        size_row = QHBoxLayout()
        size_row.addWidget(self.width_spin)
        size_row.addWidget(QLabel("×"))
        size_row.addWidget(self.height_spin)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("", self.enabled)
        form.addRow("Upscaler", self.upscaler)
        form.addRow("Upscale by", self.scale)
        form.addRow("Resize to", size_row)
        form.addRow("Hires steps", self.steps)
        form.addRow("Denoising", self.denoise)
        self.enabled.setAccessibleName("Hires fix")
        self.upscaler.setAccessibleName("Hires upscaler")
        self.scale.setAccessibleName("Hires upscale by")
        self.width_spin.setAccessibleName("Hires width")
        self.height_spin.setAccessibleName("Hires height")
        self.steps.setAccessibleName("Hires steps")
        self.denoise.setAccessibleName("Hires denoising strength")
        self.enabled.toggled.connect(self._update)
        for spin in (self.scale, self.steps, self.denoise, self.width_spin, self.height_spin):
            spin.valueChanged.connect(self.changed)
        self.enabled.toggled.connect(self.changed)
        self.upscaler.currentIndexChanged.connect(self.changed)
        self._update()

    def set_upscalers(self, models: list[str]) -> None:
        """The library's upscaler models, after the built-in upscalers; the choice is kept when it still exists."""
        current = self.upscaler.currentText()
        self.upscaler.blockSignals(True)
        self.upscaler.clear()
        self.upscaler.addItems([*builtin_upscalers(), *models])
        index = self.upscaler.findText(current)
        self.upscaler.setCurrentIndex(max(index, 0))
        self.upscaler.blockSignals(False)

    def values(self) -> dict[str, Any]:
        """The hires fields of GenerationRequest; all off (0) while the section is not enabled."""
        on = self.enabled.isChecked()
        resized = self.width_spin.value() or self.height_spin.value()
        return {
            "hires_scale": round(self.scale.value(), 2) if on and not resized else 0.0,
            "hires_width": self.width_spin.value() if on else 0,
            "hires_height": self.height_spin.value() if on else 0,
            "hires_upscaler": self.upscaler.currentText(),
            "hires_steps": self.steps.value(),
            "hires_denoise": round(self.denoise.value(), 2),
        }

    def set_values(self, values: dict[str, Any]) -> list[str]:
        """Apply the hires fields among `values` (others are ignored); notes on what could not be used."""
        notes: list[str] = []
        if not any(key in values for key in HIRES_FIELDS):
            return notes
        width, height = int(values.get("hires_width", 0)), int(values.get("hires_height", 0))
        scale = float(values.get("hires_scale", 0.0))
        self.enabled.setChecked(bool(scale or width or height))
        if scale:
            self.scale.setValue(scale)
        self.width_spin.setValue(width)
        self.height_spin.setValue(height)
        if "hires_upscaler" in values:
            index = self.upscaler.findText(str(values["hires_upscaler"]))
            if index < 0:
                notes.append(f"hires upscaler {values['hires_upscaler']!r} is not in the library, kept {self.upscaler.currentText()}")
            else:
                self.upscaler.setCurrentIndex(index)
        if "hires_steps" in values:
            self.steps.setValue(int(values["hires_steps"]))
        if "hires_denoise" in values:
            self.denoise.setValue(float(values["hires_denoise"]))
        return notes

    def _update(self) -> None:
        on = self.enabled.isChecked()
        for widget in (self.upscaler, self.width_spin, self.height_spin, self.steps, self.denoise):
            widget.setEnabled(on)
        self.scale.setEnabled(on and not (self.width_spin.value() or self.height_spin.value()))
