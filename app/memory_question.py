"""The question the window asks when a run's memory estimate exceeds the machine's memory
(mlx_sd.estimate.TooLargeError): generate anyway, or cancel and change what the estimate suggests.
The CLI and the server refuse such a run instead; in the app the user may know better (memory that
other programs will free, a cgroup limit meant for something else)."""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox, QPushButton, QWidget

from mlx_sd.estimate import TooLargeError

GIB = 2**30


def memory_question(parent: QWidget | None, error: TooLargeError) -> tuple[QMessageBox, QPushButton]:
    """The dialog (not yet shown) and its Generate Anyway button; Cancel is the default."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("Not enough memory")
    box.setText(f"This needs about {error.needed / GIB:.1f} GB; the machine has {error.available / GIB:.1f} GB.")
    box.setInformativeText(
        "Generate anyway (the computer may slow to a crawl, or the system may stop the app), or cancel and "
        + ", or ".join(error.advice) + "."
    )
    anyway = box.addButton("Generate Anyway", QMessageBox.ButtonRole.AcceptRole)
    box.setDefaultButton(box.addButton(QMessageBox.StandardButton.Cancel))
    return box, anyway


def ask_to_generate_anyway(parent: QWidget | None, error: TooLargeError) -> bool:
    box, anyway = memory_question(parent, error)
    box.exec()
    return box.clickedButton() is anyway
