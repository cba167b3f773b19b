"""The model picker: a combo box over the library's usable models (mlx_sd.model_library), the bundled demo
model last. With no model of their own the window explains how to get one (`NO_MODEL_TEXT`)."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QWidget

from mlx_sd.infotext import checkpoint_stem

from mlx_sd.model_library import ModelInfo, ModelLibrary

NO_MODEL_TEXT = (
    "No model is installed yet: drop a Stable Diffusion .safetensors checkpoint (SD 1.x, 2.x or SDXL) "
    "on this window to import it."
)
DEMO_READY_TEXT = (
    "The bundled demo model draws simple coloured shapes; drop a Stable Diffusion .safetensors checkpoint "
    "(SD 1.x, 2.x or SDXL) on this window, or use Models > Manage Models…, to get a real one."
)


class ModelPicker(QWidget):
    modelChanged = Signal(object)  # ModelInfo | None

    def __init__(self, library: ModelLibrary, parent: QWidget | None = None):
        super().__init__(parent)
        self._library = library
        self._models: list[ModelInfo] = []
        self.combo = QComboBox()
        self.combo.setMinimumContentsLength(18)
        self.combo.setPlaceholderText("No model installed")
        self.combo.setToolTip("The model to generate with")
        self.combo.setAccessibleName("Model")
        self.combo.currentIndexChanged.connect(lambda _: self.modelChanged.emit(self.current()))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo)

    @property
    def library(self) -> ModelLibrary:
        return self._library

    def set_library(self, library: ModelLibrary) -> None:
        self._library = library
        self.refresh()

    def refresh(self, select: str | None = None) -> None:
        """Read the library again; keep the selection (or select `select`) when it is still there."""
        keep = select or (self.current().name if self.current() else None)
        self._models = [m for m in self._library.models() if m.usable]
        self.combo.blockSignals(True)
        self.combo.clear()
        for model in self._models:
            label = f"{model.name} ({model.family_label}, {model.native_size}px)"
            self.combo.addItem("Demo model (shapes)" if model.bundled else label)
        names = [m.name for m in self._models]
        self.combo.setCurrentIndex(names.index(keep) if keep in names else (0 if names else -1))
        self.combo.blockSignals(False)
        self.modelChanged.emit(self.current())

    def select(self, name: str) -> bool:
        for index, model in enumerate(self._models):
            if model.name == name:
                self.combo.setCurrentIndex(index)
                return True
        return False

    def current(self) -> ModelInfo | None:
        index = self.combo.currentIndex()
        return self._models[index] if 0 <= index < len(self._models) else None

    def models(self) -> list[ModelInfo]:
        return list(self._models)

    def has_own_models(self) -> bool:
        return any(not m.bundled for m in self._models)

    def find_by_source(self, source_name: str) -> ModelInfo | None:
        """A model converted from a checkpoint of this name (infotext's `Model:` field), or None."""
        wanted = source_name.strip().casefold()
        for model in self._models:
            if wanted and wanted in (model.name.casefold(), checkpoint_stem(model.source).casefold()):
                return model
        return None
