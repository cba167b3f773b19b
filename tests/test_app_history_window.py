"""The history browser inside the main window: what the window generates appears in it, and its actions
(reuse all parameters, reuse the seed, use as img2img source, delete) reach the window.
Generation goes through part 1's ScriptedPipeline (Pipeline.generate's contract, no model)."""

from pathlib import Path

import pytest
from PySide6.QtCore import QStandardPaths
from PySide6.QtWidgets import QMessageBox

from app.history_browser import install_history_browser
from app.main import build_window
from app.main_window import MainWindow
from app.settings import AppSettings
from app_support import QT_MARKS, fake_model_folder, open_window

pytestmark = QT_MARKS
TIMEOUT = 20_000


@pytest.fixture
def library(tmp_path: Path) -> Path:
    folder = tmp_path / "library"
    fake_model_folder(folder / "models" / "tiny", native=64)
    return folder


def generate(qtbot, window: MainWindow, prompt: str, seed: int, batch: int = 1) -> None:
    window.prompt_panel.set_prompts(prompt, "ugly")
    window.parameters.set_values({"seed": seed, "steps": 3, "batch_size": batch, "cfg_scale": 5.5})
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT):
        assert window.generate() is not None


def test_generated_images_appear_and_their_parameters_come_back(qtbot, monkeypatch, library):
    window = open_window(qtbot, library)
    panel = install_history_browser(window)
    browser = panel.browser
    assert panel.show_action in window.menu("View").actions()
    assert browser.model.total == 0
    generate(qtbot, window, "a red circle on blue", 11, batch=2)
    qtbot.waitUntil(lambda: browser.model.total == 2, timeout=TIMEOUT)
    generate(qtbot, window, "a green star", 40)
    qtbot.waitUntil(lambda: browser.model.total == 3, timeout=TIMEOUT)
    assert browser.selected_entry().generation.prompt == "a green star"
    assert browser.model_filter.findText("tiny") > 0

    browser.search_box.setText("circle")
    browser.apply_filters()
    assert browser.model.total == 2
    browser.select_row(1)  # the batch's first image: seed 11
    assert browser.selected_entry().generation.seed == 11
    shown = window.result_view.current_item()  # a chosen history image is shown large
    assert shown.path == browser.selected_entry().image_path and shown.seed == 11

    window.prompt_panel.set_prompts("something else", "")
    window.parameters.set_values({"seed": 5, "steps": 20, "cfg_scale": 7.0})
    browser.actions_by_name["reuse"].trigger()
    assert window.prompt_panel.prompt() == "a red circle on blue"
    assert window.prompt_panel.negative_prompt() == "ugly"
    values = window.parameters.values()
    assert (values["seed"], values["steps"], values["cfg_scale"]) == (11, 3, 5.5)

    browser.select_row(0)  # seed 12, the batch's second image
    browser.actions_by_name["seed"].trigger()
    assert window.parameters.seed.seed() == 12

    browser.actions_by_name["source"].trigger()
    source = window.parameters.init_image.image()
    assert source is not None and source.size == (64, 64)

    doomed = browser.selected_entry()
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    browser.actions_by_name["delete"].trigger()
    assert not doomed.image_path.exists() and panel.store.get(doomed.id) is None
    assert browser.model.total == 1


def test_release_and_reopen(qtbot, tmp_path, library):
    window = open_window(qtbot, library)
    panel = install_history_browser(window)
    generate(qtbot, window, "kept", 3)
    qtbot.waitUntil(lambda: panel.browser.model.total == 1, timeout=TIMEOUT)
    panel.release()
    assert panel.store is None and panel.browser.model.total == 0
    panel.browser.grid.viewport().repaint()  # painting with no store open is fine
    panel.set_library(library)
    assert panel.browser.model.total == 1
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    panel.set_library(blocked)
    assert panel.store is None and window.message_bar.kind == "error"
    assert "The history cannot be opened" in window.message_bar.text()


@pytest.fixture
def qstandardpaths_test_mode():
    QStandardPaths.setTestModeEnabled(True)  # keep the real config and data folders out of it
    yield
    QStandardPaths.setTestModeEnabled(False)


def test_build_window_plugs_everything_in(qtbot, tmp_path, qstandardpaths_test_mode):
    library = tmp_path / "library"
    fake_model_folder(library / "models" / "tiny", native=64)
    window = build_window(AppSettings(library_folder=str(library)), tmp_path / "settings.json")
    qtbot.addWidget(window)
    view = [a.text() for a in window.menu("View").actions()]
    assert "History" in view
    assert "Manage Models\u2026" in [a.text() for a in window.menu("Models").actions()]
    file_menu = [a.text() for a in window.menu("File").actions()]
    assert file_menu.index("Settings\u2026") == file_menu.index("Quit") - 2  # then a separator, then Quit
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a checkpoint")
    window.import_checkpoint(bogus)  # handed to the model manager's importer, which fails readably
    qtbot.waitUntil(lambda: window.message_bar.kind == "error", timeout=TIMEOUT)
    assert "The model could not be imported" in window.message_bar.text()
    window.close()


def test_a_damaged_history_is_moved_aside_and_the_window_says_where(qtbot, tmp_path, library):
    library.mkdir(parents=True, exist_ok=True)
    (library / "history.sqlite3").write_bytes(b"\x00garbage" * 512)
    window = open_window(qtbot, library)
    panel = install_history_browser(window)
    [aside] = library.glob("history.damaged-*.sqlite3")
    assert panel.store is not None and panel.browser.model.total == 0
    assert window.message_bar.kind == "error" and str(aside) in window.message_bar.text()
