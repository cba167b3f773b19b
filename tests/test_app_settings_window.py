"""Settings in the main window (File > Settings…): applied at once, restored after a restart, and a
library move that keeps the history, the models and the window's generation working."""

from pathlib import Path

import pytest
from PySide6.QtWidgets import QMessageBox

from app.history_browser import install_history_browser
from app.history_store import HistoryQuery, HistoryStore
from app.main_window import MainWindow
from app.model_manager import install_model_manager
from app.settings import library_path, load_settings
from app.settings_dialog import install_settings_dialog
from app_support import QT_MARKS, ScriptedPipeline, fake_model_folder, scripted_loader

pytestmark = QT_MARKS
TIMEOUT = 20_000


def open_window(qtbot, settings_path: Path, default_library: Path):
    """A window wired as app.main.build_window wires it, generating with ScriptedPipeline."""
    settings = load_settings(settings_path)
    library = library_path(settings.library_folder, default_library)
    window = MainWindow(settings, library, settings_path, loader=scripted_loader(ScriptedPipeline()), demo_folder=None)
    history = install_history_browser(window)
    models = install_model_manager(window)
    plugin = install_settings_dialog(window, settings_path, default_library,
                                     releasers=[history.release, models.importer.shutdown],
                                     listeners=[history.set_library])
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    return window, history, plugin


def settings_action(window):
    return next(a for a in window.menu("File").actions() if a.text() == "Settings\u2026")


def test_settings_apply_and_survive_a_restart(qtbot, tmp_path):
    path, default_library = tmp_path / "config" / "settings.json", tmp_path / "appdata"
    fake_model_folder(default_library / "models" / "tiny", native=64)
    window, _, plugin = open_window(qtbot, path, default_library)
    settings_action(window).trigger()
    dialog = plugin.dialog
    assert dialog.isVisible() and dialog.parent() is window
    dialog.format_combo.setCurrentIndex(dialog.format_combo.findData("jpeg"))
    dialog.low_memory_check.setChecked(True)
    dialog.preview_spin.setValue(4)
    dialog.model_combo.setCurrentIndex(dialog.model_combo.findData("tiny"))
    dialog.accept()
    assert window.settings.output_format == "jpeg" and window.settings.low_memory
    assert window.result_view.default_save_path().suffix == ".jpg"
    assert window.build_request().low_memory
    window.close()

    again, _, plugin = open_window(qtbot, path, default_library)  # the next start
    assert again.settings == load_settings(path)
    assert (again.settings.output_format, again.settings.preview_every, again.settings.default_model) == ("jpeg", 4, "tiny")
    dialog = plugin.open()
    assert dialog.format_combo.currentData() == "jpeg" and dialog.low_memory_check.isChecked()
    assert dialog.preview_spin.value() == 4 and dialog.model_combo.currentData() == "tiny"


def generate(qtbot, window, prompt):
    window.prompt_panel.set_prompts(prompt, "")
    window.parameters.set_values({"steps": 2})
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT):
        assert window.generate() is not None


def test_moving_the_library_keeps_history_and_models(qtbot, monkeypatch, tmp_path):
    path, default_library = tmp_path / "settings.json", tmp_path / "appdata"
    fake_model_folder(default_library / "models" / "tiny", native=64)
    window, history, plugin = open_window(qtbot, path, default_library)
    generate(qtbot, window, "before the move")
    qtbot.waitUntil(lambda: history.browser.model.total == 1, timeout=TIMEOUT)

    target = tmp_path / "external disk" / "mlx-sd library"
    dialog = plugin.open()
    dialog.library_edit.setText(str(target))
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    dialog.accept()
    assert not dialog.isVisible()
    assert not default_library.exists()
    assert window.library == target and load_settings(path).library_folder == str(target)
    assert window.picker.current().name == "tiny" and window.picker.current().path.is_relative_to(target)
    assert history.browser.model.total == 1
    assert history.browser.selected_entry().image_path.is_relative_to(target)

    generate(qtbot, window, "after the move")  # the worker records into the moved library
    qtbot.waitUntil(lambda: history.browser.model.total == 2, timeout=TIMEOUT)
    window.close()
    store = HistoryStore(target)
    entries = store.page(HistoryQuery(), 0, 10)
    assert sorted(e.generation.prompt for e in entries) == ["after the move", "before the move"]
    assert all(e.image_path.is_relative_to(target) and e.image_path.is_file() for e in entries)
    store.close()


def test_a_failed_move_leaves_everything_working(qtbot, monkeypatch, tmp_path):
    path, default_library = tmp_path / "settings.json", tmp_path / "appdata"
    fake_model_folder(default_library / "models" / "tiny", native=64)
    window, history, plugin = open_window(qtbot, path, default_library)
    generate(qtbot, window, "stays")
    qtbot.waitUntil(lambda: history.browser.model.total == 1, timeout=TIMEOUT)

    def refuse(old, new):
        raise PermissionError(13, "Permission denied", str(new))

    monkeypatch.setattr("app.settings_dialog.move_library", refuse)
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    dialog = plugin.open()
    dialog.library_edit.setText(str(tmp_path / "elsewhere"))
    dialog.accept()
    assert dialog.isVisible() and "could not be moved" in dialog.message.text()
    assert window.library == default_library and history.browser.model.total == 1
    generate(qtbot, window, "still recording")
    qtbot.waitUntil(lambda: history.browser.model.total == 2, timeout=TIMEOUT)


@pytest.mark.parametrize("gpu", [True, False])
def test_device_setting_reaches_the_dialog(qtbot, monkeypatch, tmp_path, gpu):
    monkeypatch.setattr("app.settings_dialog.gpu_available", lambda: gpu)
    window, _, plugin = open_window(qtbot, tmp_path / "s.json", tmp_path / "appdata")
    dialog = plugin.open()
    assert dialog.device_combo.isEnabled() is gpu
