"""Model import and management in the main window: with no model the window says how to get one; a
dropped or chosen checkpoint is converted (the real converter, a tiny single-file checkpoint) with a
progress dialog and is then selected; renames and deletes reach the picker and the default model."""


from PySide6.QtWidgets import QFileDialog, QInputDialog, QMessageBox

from app.drop_handler import classify_file
from app.model_manager import install_model_manager
from app.model_picker import NO_MODEL_TEXT
from app.settings import AppSettings, load_settings, save_settings
from app_support import QT_MARKS, fake_model_folder, open_window

pytestmark = QT_MARKS
TIMEOUT = 120_000


def test_drop_or_choose_a_checkpoint_then_generate_with_it(qtbot, monkeypatch, tmp_path, tiny_models):
    library = tmp_path / "library"
    window = open_window(qtbot, library, settings=AppSettings(precision="float32"))
    plugin = install_model_manager(window)
    assert window.picker.current() is None
    assert window.result_view.canvas._placeholder.startswith(NO_MODEL_TEXT)
    checkpoint = tiny_models.single_file("sd1")

    with qtbot.waitSignal(plugin.importer.imported, timeout=TIMEOUT) as imported:
        window.handle_drop(classify_file(checkpoint))  # what a drop anywhere on the window does
        assert plugin.importer.progress_dialog.isVisible()
        assert plugin.importer.progress_dialog.parent() is window
    assert imported.args == ["sd1-single"]
    assert window.picker.current().name == "sd1-single"  # selectable, and selected
    assert window.picker.current().precision == "float32"  # the precision setting was used
    assert window.generate_button.isEnabled()
    assert "Imported sd1-single" in window.message_bar.text()

    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(checkpoint), ""))
    with qtbot.waitSignal(plugin.importer.imported, timeout=TIMEOUT) as imported:
        window.choose_checkpoint()  # Models > Import Checkpoint…
    assert imported.args == ["sd1-single-2"]
    assert [m.name for m in window.picker.models()] == ["sd1-single", "sd1-single-2"]
    assert window.picker.current().name == "sd1-single-2"


def test_manager_rename_and_delete_follow_the_picker_and_default_model(qtbot, monkeypatch, tmp_path):
    library = tmp_path / "library"
    fake_model_folder(library / "models" / "alpha", native=64)
    fake_model_folder(library / "models" / "beta", native=64)
    path = tmp_path / "settings.json"
    save_settings(AppSettings(default_model="alpha", prompt_prefix="kept"), path)
    window = open_window(qtbot, library, settings=load_settings(path), settings_path=path)
    plugin = install_model_manager(window)
    assert window.picker.current().name == "alpha"
    dialog = plugin.open()
    assert dialog.isVisible() and dialog.selected().name == "alpha"

    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("Alpha v2", True))
    dialog.rename_button.click()
    assert window.picker.current().name == "Alpha v2"
    assert window.settings.default_model == "Alpha v2"
    assert load_settings(path) == AppSettings(default_model="Alpha v2", prompt_prefix="kept")

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    dialog.delete_button.click()
    assert [m.name for m in window.picker.models()] == ["beta"]
    assert window.picker.current().name == "beta"
    assert load_settings(path).default_model == ""

    dialog.select("beta")
    dialog.use_button.click()
    assert not dialog.isVisible() and window.picker.current().name == "beta"


def test_import_menu_entry(qtbot, tmp_path):
    window = open_window(qtbot, tmp_path / "library", settings=AppSettings())
    install_model_manager(window)
    entries = [a.text() for a in window.menu("Models").actions()]
    assert entries == ["Import Checkpoint\u2026", "Manage Models\u2026"]
