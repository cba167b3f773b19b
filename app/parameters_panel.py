"""Generation parameters: presets, sampler and schedule, steps, CFG, size with aspect presets snapped
to the model's native resolution, seed (with dice and reuse-last-seed), batch size and count, and the
image-to-image source with its strength; the rarely changed ones (schedule, clip skip, prefix and suffix,
SDXL refiner aesthetic scores, VAE tiling, low memory) sit in a collapsed "Advanced" section. The preset box
says "Custom" once a value differs from the applied preset."""

from __future__ import annotations

import sys
from typing import Any

from PIL import Image
from PySide6.QtCore import QRegularExpression, QSize, Qt, Signal
from PySide6.QtGui import QFontMetrics, QPixmap, QRegularExpressionValidator
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from mlx_sd.generation import random_seed
from mlx_sd.request import MAX_SIZE, MAX_STEPS, MIN_SIZE, RANDOM_SEED
from mlx_sd.samplers import SAMPLERS, sampler_by_name
from mlx_sd.schedules import SCHEDULES, schedule_by_name

from .collapsible_section import CollapsibleSection
from .hires_section import HiresSection
from .presets import ASPECTS, aspect_size, clean_params, resolve, size_step
from .result_view import pil_to_qimage
from .settings import Preset

DICE = "🎲"
THUMBNAIL = 120
CUSTOM = "Custom"
# VAE tiling choices -> the request's vae_tiling
TILING = {"Automatic": None, "On": True, "Off": False}


class SeedEdit(QWidget):
    """A seed field (-1 = random) with a dice button and a button that reuses the last seed.

    A line edit rather than a spin box: seeds go up to 2^64 - 1 (a run's later images count past
    2^32 - 1), far past a QSpinBox's int range."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.edit = QLineEdit(str(RANDOM_SEED))
        self.edit.setValidator(QRegularExpressionValidator(QRegularExpression(r"-1|\d{1,20}")))
        self.edit.setToolTip("-1 picks a new random seed for every run")
        self.dice = QToolButton()
        # macOS always has an emoji font; elsewhere the die may be missing, then say it in words
        has_die = sys.platform == "darwin" or QFontMetrics(self.font()).inFontUcs4(ord(DICE))
        self.dice.setText(DICE if has_die else "Dice")
        self.dice.setToolTip("Pick a random seed")
        self.dice.clicked.connect(lambda: self.set_seed(random_seed()))
        self.random_button = QToolButton()
        self.random_button.setText("-1")
        self.random_button.setToolTip("A new random seed every run")
        self.random_button.clicked.connect(lambda: self.set_seed(RANDOM_SEED))
        self.reuse = QToolButton()
        self.reuse.setText("♻")
        self.reuse.setToolTip("Reuse the seed of the last image")
        self.reuse.setEnabled(False)
        self.reuse.clicked.connect(self._reuse_last)
        self._last: int | None = None
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.edit, self.dice, self.random_button, self.reuse):
            layout.addWidget(widget)

    def seed(self) -> int:
        """The seed typed in; an empty field (or a lone "-") means random. A number out of range is
        passed on as typed, so the request's validation names it instead of it silently becoming random."""
        try:
            return int(self.edit.text())
        except ValueError:
            return RANDOM_SEED

    def set_seed(self, seed: int) -> None:
        self.edit.setText(str(seed))

    def set_last_seed(self, seed: int | None) -> None:
        self._last = seed
        self.reuse.setEnabled(seed is not None)
        self.reuse.setToolTip("Reuse the seed of the last image" + (f" ({seed})" if seed is not None else ""))

    def _reuse_last(self) -> None:
        if self._last is not None:
            self.set_seed(self._last)


class InitImageBox(QGroupBox):
    """The image-to-image source: thumbnail, strength slider, clear and paste buttons."""

    cleared = Signal()
    pasteRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Image to image", parent)
        self.thumbnail = QLabel("Drop or paste an image here to start from it")
        self.thumbnail.setWordWrap(True)
        self.thumbnail.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumbnail.setMinimumHeight(THUMBNAIL // 2)
        self.strength = QSlider(Qt.Orientation.Horizontal)
        self.strength.setRange(0, 100)
        self.strength.setValue(75)
        self.strength_label = QLabel()
        self.strength.valueChanged.connect(lambda v: self.strength_label.setText(f"{v / 100:.2f}"))
        self.strength_label.setText("0.75")
        self.strength.setToolTip("How much to change the source: 0 keeps it, 1 ignores it")
        self.clear_button = QPushButton("Clear")
        self.clear_button.clicked.connect(self.clear)
        self.paste_button = QPushButton("Paste")
        self.paste_button.setToolTip("Use the image on the clipboard")
        self.paste_button.clicked.connect(self.pasteRequested)
        strength_row = QHBoxLayout()
        strength_row.addWidget(QLabel("Strength"))
        strength_row.addWidget(self.strength, 1)
        strength_row.addWidget(self.strength_label)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.paste_button)
        buttons.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.thumbnail)
        layout.addLayout(strength_row)
        layout.addLayout(buttons)
        self._image: Image.Image | None = None
        self._update()

    def image(self) -> Image.Image | None:
        return self._image

    def set_image(self, image: Image.Image) -> None:
        self._image = image
        thumb = image.copy()
        thumb.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
        self.thumbnail.setPixmap(QPixmap.fromImage(pil_to_qimage(thumb)))
        self.thumbnail.setToolTip(f"{image.width} x {image.height}")
        self._update()

    def clear(self) -> None:
        if self._image is None:
            return
        self._image = None
        self.thumbnail.setPixmap(QPixmap())
        self.thumbnail.setText("Drop or paste an image here to start from it")
        self._update()
        self.cleared.emit()

    def strength_value(self) -> float:
        return self.strength.value() / 100

    def set_strength(self, value: float) -> None:
        self.strength.setValue(round(min(max(value, 0.0), 1.0) * 100))

    def _update(self) -> None:
        has = self._image is not None
        self.clear_button.setEnabled(has)
        self.strength.setEnabled(has)


class ParametersPanel(QWidget):
    presetSaveRequested = Signal(str)  # name
    presetDeleteRequested = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._native = 512
        self._user_presets: list[str] = []

        # presets
        self.preset_combo = QComboBox()
        self.preset_combo.setToolTip("Apply a preset: built-in ones first, then your own")
        self.preset_combo.setAccessibleName("Preset")
        self.preset_combo.setPlaceholderText(CUSTOM)  # shown while no preset matches the values
        self.preset_combo.activated.connect(self._preset_activated)
        self.save_preset_button = QToolButton()
        self.save_preset_button.setText("Save…")
        self.save_preset_button.setToolTip("Save these parameters as a preset")
        self.save_preset_button.clicked.connect(self._ask_preset_name)
        self.delete_preset_button = QToolButton()
        self.delete_preset_button.setText("Delete")
        self.delete_preset_button.clicked.connect(
            lambda: self.presetDeleteRequested.emit(self.preset_combo.currentText())
        )
        self._presets: list[Preset] = []
        self._applied: dict[str, Any] = {}  # what the selected preset set; a difference means "Custom"
        self._applying = False

        # sampling
        self.sampler = QComboBox()
        self.sampler.addItems([info.name for info in SAMPLERS])
        self.schedule = QComboBox()
        self.schedule.addItems([s.name for s in SCHEDULES])
        self.steps = QSpinBox()
        self.steps.setRange(1, MAX_STEPS)
        self.steps.setValue(20)
        self.cfg = QDoubleSpinBox()
        self.cfg.setRange(0.0, 30.0)
        self.cfg.setSingleStep(0.5)
        self.cfg.setDecimals(1)
        self.cfg.setValue(7.0)
        self.clip_skip = QSpinBox()
        self.clip_skip.setRange(1, 12)
        self.clip_skip.setToolTip("1 = the model's normal text-encoder layer; 2 is common for anime models")
        self.aesthetic = QDoubleSpinBox()
        self.negative_aesthetic = QDoubleSpinBox()
        for spin, value in ((self.aesthetic, 6.0), (self.negative_aesthetic, 2.5)):
            spin.setRange(0.0, 10.0)
            spin.setSingleStep(0.5)
            spin.setDecimals(1)
            spin.setValue(value)
            spin.setToolTip("Used by the SDXL refiner only")
        self.tiling = QComboBox()
        self.tiling.addItems(list(TILING))
        self.tiling.setToolTip("Decode the image in tiles: Automatic tiles only images larger than the VAE's tile")
        self.low_memory = QCheckBox("Low memory")
        self.low_memory.setToolTip("Release the text encoders before the image model runs")

        # size
        self.width_spin = QSpinBox()
        self.height_spin = QSpinBox()
        for spin in (self.width_spin, self.height_spin):
            spin.setRange(MIN_SIZE, MAX_SIZE)
            spin.setSingleStep(8)
            spin.setValue(512)
            spin.setSuffix(" px")
            spin.valueChanged.connect(self._size_edited)
        self.aspect_group = QButtonGroup(self)
        aspect_row = QHBoxLayout()
        for name in ASPECTS:
            button = QToolButton()
            button.setText(name.capitalize())
            button.setCheckable(True)
            button.setProperty("aspect", name)
            self.aspect_group.addButton(button)
            aspect_row.addWidget(button)
        self.aspect_group.buttonClicked.connect(lambda b: self.set_aspect(b.property("aspect")))
        self._aspect: str | None = None
        self._setting_size = False

        # seed and batch
        self.seed = SeedEdit()
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 64)
        self.batch_size.setToolTip("Images per model call (more needs more memory)")
        self.batch_count = QSpinBox()
        self.batch_count.setRange(1, 64)
        self.batch_count.setToolTip("Model calls one after another; image k uses seed + k")

        self.init_image = InitImageBox()

        preset_row = QHBoxLayout()
        preset_row.addWidget(self.preset_combo, 1)
        preset_row.addWidget(self.save_preset_button)
        preset_row.addWidget(self.delete_preset_button)
        size_row = QHBoxLayout()
        size_row.addWidget(self.width_spin)
        size_row.addWidget(QLabel("×"))
        size_row.addWidget(self.height_spin)
        batch_row = QHBoxLayout()
        batch_row.addWidget(self.batch_size)
        batch_row.addWidget(QLabel("images ×"))
        batch_row.addWidget(self.batch_count)
        batch_row.addWidget(QLabel("runs"))

        form = QFormLayout()
        form.addRow("Preset", preset_row)
        form.addRow("Sampler", self.sampler)
        form.addRow("Steps", self.steps)
        form.addRow("CFG scale", self.cfg)
        form.addRow("Size", size_row)
        form.addRow("Aspect", aspect_row)
        form.addRow("Seed", self.seed)
        form.addRow("Batch", batch_row)
        advanced = QWidget()
        self.advanced_form = QFormLayout(advanced)
        self.advanced_form.setContentsMargins(0, 0, 0, 0)
        self.advanced_form.addRow("Schedule", self.schedule)
        self.advanced_form.addRow("Clip skip", self.clip_skip)
        self.advanced_form.addRow("Aesthetic score", self.aesthetic)
        self.advanced_form.addRow("Negative aesthetic score", self.negative_aesthetic)
        self.advanced_form.addRow("VAE tiling", self.tiling)
        self.advanced_form.addRow("", self.low_memory)
        self.advanced = CollapsibleSection("Advanced", advanced)
        self.hires = HiresSection()
        self.hires.changed.connect(self._check_custom)
        self.hires_section = CollapsibleSection("Hires fix", self.hires)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.init_image)
        layout.addWidget(self.hires_section)
        layout.addWidget(self.advanced)
        layout.addStretch(1)
        self.set_aspect("square")
        name_controls(form)
        name_controls(self.advanced_form)
        self.seed.edit.setAccessibleName("Seed")
        self.batch_size.setAccessibleName("Images per batch")
        self.batch_count.setAccessibleName("Batch runs")
        self.width_spin.setAccessibleName("Width")
        self.height_spin.setAccessibleName("Height")
        self.init_image.strength.setAccessibleName("Denoising strength")
        for spin in (self.steps, self.cfg, self.clip_skip, self.aesthetic, self.negative_aesthetic,
                     self.width_spin, self.height_spin, self.batch_size, self.batch_count):
            spin.valueChanged.connect(self._check_custom)
        for combo in (self.sampler, self.schedule):
            combo.currentIndexChanged.connect(self._check_custom)

    def add_advanced_row(self, label: str, widget: QWidget) -> None:
        """A control of the window's (the prompt prefix and suffix) in the Advanced section."""
        self.advanced_form.addRow(label, widget)
        if not widget.accessibleName():
            widget.setAccessibleName(label)

    # -- values -----------------------------------------------------------------------------

    def values(self) -> dict[str, Any]:
        """The parameters in GenerationRequest field names."""
        return {
            "sampler": self.sampler.currentText(),
            "schedule": self.schedule.currentText(),
            "steps": self.steps.value(),
            "cfg_scale": round(self.cfg.value(), 2),
            "width": self.width_spin.value(),
            "height": self.height_spin.value(),
            "seed": self.seed.seed(),
            "batch_size": self.batch_size.value(),
            "batch_count": self.batch_count.value(),
            "clip_skip": self.clip_skip.value(),
            "strength": self.init_image.strength_value(),
            "aesthetic_score": round(self.aesthetic.value(), 2),
            "negative_aesthetic_score": round(self.negative_aesthetic.value(), 2),
            "vae_tiling": TILING[self.tiling.currentText()],
            **self.hires.values(),
        }

    def preset_values(self) -> dict[str, Any]:
        """What a saved preset keeps: the aspect when one is chosen (so it fits any model), else the size."""
        values = {k: v for k, v in self.values().items() if k not in ("seed", "strength")}
        if self._aspect is not None:
            del values["width"], values["height"]
            values["aspect"] = self._aspect
        return values

    def set_values(self, values: dict[str, Any]) -> list[str]:
        """Apply the given parameters (others are kept); returns notes on values that were not usable."""
        notes: list[str] = []
        if "sampler" in values:
            try:
                self.sampler.setCurrentText(sampler_by_name(str(values["sampler"])).name)
            except ValueError:
                notes.append(f"sampler {values['sampler']!r} is not available, kept {self.sampler.currentText()}")
        if "schedule" in values:
            try:
                self.schedule.setCurrentText(schedule_by_name(str(values["schedule"])).name)
            except ValueError:
                notes.append(f"schedule {values['schedule']!r} is not available, kept {self.schedule.currentText()}")
        spins = {"steps": self.steps, "batch_size": self.batch_size, "batch_count": self.batch_count, "clip_skip": self.clip_skip}
        for key, spin in spins.items():
            if key in values:
                spin.setValue(int(values[key]))
        if "cfg_scale" in values:
            self.cfg.setValue(float(values["cfg_scale"]))
        if "width" in values or "height" in values:
            self.set_size(int(values.get("width", self.width_spin.value())), int(values.get("height", self.height_spin.value())))
        if "seed" in values:
            self.seed.set_seed(int(values["seed"]))
        if "strength" in values:
            self.init_image.set_strength(float(values["strength"]))
        for key, spin in (("aesthetic_score", self.aesthetic), ("negative_aesthetic_score", self.negative_aesthetic)):
            if key in values:
                spin.setValue(float(values[key]))
        if "vae_tiling" in values:
            self.tiling.setCurrentText(next((k for k, v in TILING.items() if v is values["vae_tiling"]), "Automatic"))
        notes += self.hires.set_values(values)
        return notes

    # -- size ---------------------------------------------------------------------------------

    def native_size(self) -> int:
        return self._native

    def set_native_size(self, native: int) -> None:
        """A new model: sizes step with its native resolution and a chosen aspect is snapped again
        (an explicit size is kept)."""
        self._native = native
        step = size_step(native)
        for spin in (self.width_spin, self.height_spin):
            spin.setSingleStep(step)
        self._applying = True  # the model's sizes are not a change of the user's
        if self._aspect is not None:
            self.set_aspect(self._aspect)
        index = self.preset_combo.currentIndex()
        if 0 <= index < len(self._presets):
            self._applied = resolve(self._presets[index], native)
        self._applying = False

    def set_aspect(self, aspect: str) -> None:
        width, height = aspect_size(aspect, self._native)
        self._put_size(width, height)
        self._aspect = aspect
        self._check_aspect_button()

    def aspect(self) -> str | None:
        return self._aspect

    def set_size(self, width: int, height: int) -> None:
        """An explicit size: no aspect preset is selected unless the size is exactly one."""
        self._put_size(width, height)
        self._aspect = next((a for a in ASPECTS if aspect_size(a, self._native) == (width, height)), None)
        self._check_aspect_button()

    def _put_size(self, width: int, height: int) -> None:
        self._setting_size = True
        self.width_spin.setValue(width)
        self.height_spin.setValue(height)
        self._setting_size = False

    def _size_edited(self) -> None:
        if not self._setting_size:
            self.set_size(self.width_spin.value(), self.height_spin.value())

    def _check_aspect_button(self) -> None:
        self.aspect_group.setExclusive(False)  # an exclusive group cannot have no button checked
        for button in self.aspect_group.buttons():
            button.setChecked(button.property("aspect") == self._aspect)
        self.aspect_group.setExclusive(True)

    # -- presets ------------------------------------------------------------------------------

    def set_presets(self, presets: list[Preset], user_names: list[str]) -> None:
        current = self.preset_combo.currentText()
        self._presets = list(presets)
        self._user_presets = list(user_names)
        self.preset_combo.clear()
        for preset in self._presets:
            self.preset_combo.addItem(preset.name)
        self.preset_combo.setCurrentIndex(self.preset_combo.findText(current))  # -1 shows the placeholder
        self._update_delete()

    def preset_names(self) -> list[str]:
        return [p.name for p in self._presets]

    def apply_preset(self, name: str) -> None:
        for preset in self._presets:
            if preset.name == name:
                self._applying = True
                aspect = clean_params(preset.params).get("aspect")
                self._applied = resolve(preset, self._native)
                self.set_values(self._applied)
                if aspect is not None:
                    self._aspect = aspect
                    self._check_aspect_button()
                self._applying = False
                self.preset_combo.setCurrentText(name)
                self._update_delete()
                return
        raise KeyError(f"no preset named {name!r}; presets are {', '.join(self.preset_names())}")

    def preset_label(self) -> str:
        """What the preset box shows: the preset in use, or "Custom"."""
        return self.preset_combo.currentText() or CUSTOM

    def show_preset(self, name: str) -> None:
        """Name `name` as the preset in use without applying it (a restored window): "Custom" when the
        values differ from it."""
        for index, preset in enumerate(self._presets):
            if preset.name == name:
                self._applied = resolve(preset, self._native)
                self.preset_combo.setCurrentIndex(index)
                self._check_custom()
                self._update_delete()
                return

    def _check_custom(self) -> None:
        """Show "Custom" once a value differs from what the selected preset set."""
        if self._applying or self.preset_combo.currentIndex() < 0:
            return
        values = self.values()
        if any(values.get(key) != value for key, value in self._applied.items()):
            self.preset_combo.setCurrentIndex(-1)
            self._update_delete()

    def _preset_activated(self, index: int) -> None:
        if 0 <= index < len(self._presets):
            self.apply_preset(self._presets[index].name)

    def _update_delete(self) -> None:
        self.delete_preset_button.setEnabled(self.preset_combo.currentText() in self._user_presets)

    def _ask_preset_name(self) -> None:
        name, ok = QInputDialog.getText(self, "Save Preset", "Name for these parameters:")
        if ok and name.strip():
            self.presetSaveRequested.emit(name)

    def sizeHint(self) -> QSize:
        return QSize(340, super().sizeHint().height())


def name_controls(form: QFormLayout) -> None:
    """Give each field of `form` its row label as accessible name (screen readers, UI tests)."""
    for row in range(form.rowCount()):
        label = form.itemAt(row, QFormLayout.ItemRole.LabelRole)
        field = form.itemAt(row, QFormLayout.ItemRole.FieldRole)
        if label is None or field is None or not isinstance(label.widget(), QLabel):
            continue
        widget = field.widget()
        if widget is not None and not widget.accessibleName():
            widget.setAccessibleName(label.widget().text())
