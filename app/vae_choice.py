"""The VAE a model decodes with, chosen per model (A1111's "SD VAE"): a combo under Advanced holding
Automatic (the model's own VAE) and the library's VAEs. The choice made for a model is remembered in the
settings (`AppSettings.model_vaes`) and comes back when that model is selected; it is sent as
`GenerationRequest.vae`. A restored PNG's `VAE:` selects that VAE when the library has it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QWidget

from mlx_sd.infotext import Infotext, checkpoint_stem
from mlx_sd.library import Library
from mlx_sd.request import GenerationRequest

from mlx_sd.model_library import ModelInfo

if TYPE_CHECKING:
    from .main_window import MainWindow

AUTOMATIC = "Automatic"


class VaeChoice(QComboBox):
    def __init__(self, library: Path, parent: QWidget | None = None):
        super().__init__(parent)
        self.library = Library(library)
        self.setToolTip("The VAE that turns the model's latents into the picture; Automatic is the model's own")
        self.setAccessibleName("VAE")
        self.refresh()

    def set_library(self, library: Path) -> None:
        self.library = Library(library)
        self.refresh()

    def refresh(self) -> None:
        """List the library's VAEs again, keeping the choice when it is still there."""
        chosen = self.currentText()
        self.blockSignals(True)
        self.clear()
        self.addItem(AUTOMATIC)
        for item in self.library.items("vae"):
            self.addItem(item.name)
            self.setItemData(self.count() - 1, str(item.path), Qt.ItemDataRole.ToolTipRole)
        self.blockSignals(False)
        self.choose(chosen)

    def names(self) -> list[str]:
        return [self.itemText(i) for i in range(1, self.count())]

    def choose(self, name: str) -> bool:
        """Select the VAE `name` (Automatic when it is not in the library); whether it was there."""
        index = self.findText(name) if name else -1
        self.setCurrentIndex(max(index, 0))
        return index >= 0

    def vae(self) -> str | None:
        """What GenerationRequest.vae gets: None for Automatic."""
        return None if self.currentIndex() <= 0 else self.currentText()

    def apply(self, request: GenerationRequest) -> GenerationRequest:
        return dataclasses.replace(request, vae=self.vae())

    def restore(self, _request: GenerationRequest, info: Infotext | None) -> list[str]:
        """Select a restored infotext's VAE when the library has it; a note when it does not."""
        named = info.params.get("VAE", "").strip() if info is not None else ""
        if not named:
            return []
        stem = checkpoint_stem(named)
        if stem not in self.names():
            return [f"the VAE {stem} is not in the library, kept {self.currentText()}"]
        self.choose(stem)
        return []


def install_vae_choice(window: MainWindow) -> VaeChoice:
    """The combo under the window's Advanced parameters, following its model, library and drops."""
    choice = VaeChoice(window.library)
    window.parameters.add_advanced_row("VAE", choice)

    def model_changed(model: ModelInfo | None) -> None:
        choice.choose(window.settings.model_vaes.get(model.name, AUTOMATIC) if model is not None else AUTOMATIC)

    def remember(_: int) -> None:  # the user's choice only (`activated`), not a restored one
        model = window.picker.current()
        if model is not None:
            vaes = {**window.settings.model_vaes, model.name: choice.currentText()}
            if choice.currentText() == AUTOMATIC:
                vaes.pop(model.name)
            window.update_settings(dataclasses.replace(window.settings, model_vaes=vaes))

    window.picker.modelChanged.connect(model_changed)
    model_changed(window.picker.current())
    choice.activated.connect(remember)
    window.resourcesChanged.connect(lambda kind: choice.refresh() if kind == "vae" else None)
    window.request_transforms.append(choice.apply)
    window.restore_hooks.append(choice.restore)
    return choice
