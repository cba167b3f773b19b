"""The app asks before a run whose memory estimate exceeds the machine's (app.memory_question): the
real window and demo model, with the machine's memory made small; and the dialog itself."""

from pathlib import Path

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

import mlx_sd.generation as generation
from app.main_window import MainWindow
from app.memory_question import ask_to_generate_anyway, memory_question
from app.settings import AppSettings
from app_support import QT_MARKS
from mlx_sd.estimate import TooLargeError

pytestmark = QT_MARKS
GIB = 2**30


def test_the_window_asks_and_generates_anyway_only_when_told(qtbot, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(generation, "machine_memory", lambda: 1 << 20)  # 1 MiB: every run is too large
    window = MainWindow(AppSettings(), tmp_path / "library", None)
    qtbot.addWidget(window)
    assert window.picker.current().name == "demo"
    window.prompt_panel.prompt_edit.setPlainText("a red circle")
    window.parameters.set_values({"seed": 3, "steps": 2})
    answers, asked = [False, True], []

    def ask(parent, error: TooLargeError) -> bool:
        asked.append((error.needed, error.available, error.advice))
        return answers.pop(0)

    window.ask_memory = ask
    with qtbot.waitSignal(window.controller.too_large, timeout=60_000):
        window.generate()
    assert len(asked) == 1 and asked[0][1] == 1 << 20 and asked[0][0] > 1 << 20 and "use a smaller size or batch" in asked[0][2]
    assert not window.controller.busy and window.generate_button.isEnabled()
    assert window.result_view.model.rowCount() == 0 and "more memory" in window.progress_label.text()

    with qtbot.waitSignal(window.controller.finished, timeout=120_000):
        with qtbot.waitSignal(window.controller.too_large, timeout=60_000):
            window.generate()
    assert len(asked) == 2
    assert window.result_view.model.rowCount() == 1 and window.result_view.model.item(0).path.is_file()
    assert not window.controller.busy


def test_the_dialog_says_how_much_and_what_to_change(qtbot) -> None:
    error = TooLargeError("too large", 30 * GIB, 24 * GIB, ["turn on the tiled VAE", "use a smaller size or batch"])
    box, anyway = memory_question(None, error)
    qtbot.addWidget(box)
    assert box.text() == "This needs about 30.0 GB; the machine has 24.0 GB."
    assert "Generate anyway" in box.informativeText()
    assert "cancel and turn on the tiled VAE, or use a smaller size or batch." in box.informativeText()
    assert box.defaultButton() is box.button(QMessageBox.StandardButton.Cancel) and anyway.text() == "Generate Anyway"


@pytest.mark.parametrize("choice", ["Generate Anyway", "Cancel"])
def test_the_answer_is_the_button_pressed(qtbot, choice) -> None:
    def press() -> None:
        box = QApplication.activeModalWidget()
        if box is None:  # not shown yet
            QTimer.singleShot(20, press)
            return
        next(b for b in box.buttons() if b.text().replace("&", "") == choice).click()

    QTimer.singleShot(20, press)
    error = TooLargeError("too large", 3 * GIB, 2 * GIB, ["use a smaller size or batch"])
    assert ask_to_generate_anyway(None, error) is (choice == "Generate Anyway")
