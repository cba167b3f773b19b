"""The settings dialog offscreen: every setting shown, saved and restored after a restart; the compute
device as MLX offers it; moving or switching the library folder (the history comes along)."""

from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtWidgets import QDialog, QFileDialog, QLabel, QMessageBox

from app.history_store import Generation, HistoryStore
from mlx_sd.model_library import ModelInfo
from app.settings import AppSettings, Preset, load_settings
from app.settings_dialog import SettingsDialog, is_library

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    # the offscreen platform plugin says this for every top-level window with a layout
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints"),
]

MODELS = [
    ModelInfo("dreamshaper", Path("/m/dreamshaper"), family="sd1", native_size=512, precision="float16"),
    ModelInfo("broken", Path("/m/broken"), error="damaged"),
    ModelInfo("demo", Path("/r/demo"), family="sd1", native_size=64, precision="float16", bundled=True),
]


@pytest.fixture
def default_library(tmp_path):
    return tmp_path / "appdata" / "mlx-sd"


def make_dialog(qtbot, settings, path, default_library, gpu=True, models=MODELS, bf16=True, **kwargs):
    dialog = SettingsDialog(settings, path, default_library, models, gpu=gpu, bf16=bf16, **kwargs)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def test_shows_the_settings_and_keeps_what_it_does_not_show(qtbot, tmp_path, default_library):
    settings = AppSettings(prompt_prefix="photo of", user_presets=[Preset("Mine", {"steps": 9})], preview_every=3)
    dialog = make_dialog(qtbot, settings, tmp_path / "settings.json", default_library)
    assert dialog.library_edit.text() == "" and str(default_library) in dialog.library_edit.placeholderText()
    assert [dialog.model_combo.itemData(i) for i in range(dialog.model_combo.count())] == ["", "dreamshaper", "demo"]
    assert dialog.model_combo.itemText(2) == "Demo model (shapes)"
    assert dialog.precision_combo.currentData() == "float16"
    assert dialog.preview_spin.value() == 3 and dialog.preview_spin.text() == "every 3 steps"
    assert dialog.settings() == settings
    dialog.preview_spin.setValue(1)
    assert dialog.preview_spin.text() == "every 1 step"
    dialog.preview_spin.setValue(2)
    assert dialog.preview_spin.text() == "every 2 steps"


def test_at_its_smallest_every_note_is_whole(qtbot, tmp_path, default_library):
    dialog = make_dialog(qtbot, AppSettings(), tmp_path / "settings.json", default_library)
    dialog.resize(dialog.minimumSize())
    qtbot.waitUntil(lambda: dialog.size() == dialog.minimumSize())
    notes = [label for label in dialog.findChildren(QLabel) if label.wordWrap() and label.text()]
    assert len(notes) == 2  # the library's and the API's
    for label in notes:
        assert label.height() >= label.heightForWidth(label.width()), label.text()
        assert label.mapTo(dialog, label.rect().bottomLeft()).y() <= dialog.height()


def test_settings_are_restored_after_a_restart(qtbot, tmp_path, default_library):
    path = tmp_path / "config" / "settings.json"
    first = make_dialog(qtbot, AppSettings(prompt_suffix="8k"), path, default_library)
    first.model_combo.setCurrentIndex(first.model_combo.findData("demo"))
    first.precision_combo.setCurrentIndex(first.precision_combo.findData("bfloat16"))
    first.low_memory_check.setChecked(True)
    first.device_combo.setCurrentIndex(first.device_combo.findData("cpu"))
    first.cpu_precision_combo.setCurrentIndex(first.cpu_precision_combo.findData("bfloat16"))
    first.preview_spin.setValue(0)
    first.format_combo.setCurrentIndex(first.format_combo.findData("webp"))
    assert not first.allow_pickle_check.isChecked(), "pickles are off by default"
    assert "weights-only unpickler" in first.allow_pickle_check.toolTip()
    first.allow_pickle_check.setChecked(True)
    with qtbot.waitSignal(first.settings_saved) as saved:
        first.accept()
    assert first.result() == QDialog.DialogCode.Accepted
    expected = AppSettings(default_model="demo", precision="bfloat16", low_memory=True, compute_device="cpu",
                           cpu_precision="bfloat16", preview_every=0, output_format="webp", prompt_suffix="8k",
                           allow_pickle=True)
    assert saved.args == [expected] and load_settings(path) == expected
    # the next start: a new dialog over the settings read back from the file
    second = make_dialog(qtbot, load_settings(path), path, default_library)
    assert second.model_combo.currentData() == "demo"
    assert second.precision_combo.currentData() == "bfloat16"
    assert second.low_memory_check.isChecked()
    assert second.device_combo.currentData() == "cpu"
    assert second.cpu_precision_combo.currentData() == "bfloat16"
    assert second.preview_spin.value() == 0 and second.preview_spin.text() == "Off"
    assert second.format_combo.currentData() == "webp"
    assert second.allow_pickle_check.isChecked()
    assert second.settings() == expected


def test_cpu_precision_offers_bfloat16_only_where_the_cpu_has_it(qtbot, tmp_path, default_library):
    able = make_dialog(qtbot, AppSettings(cpu_precision="bfloat16"), None, default_library, bf16=True)
    assert able.cpu_precision_combo.isEnabled() and able.cpu_precision_combo.currentData() == "bfloat16"
    assert [able.cpu_precision_combo.itemData(i) for i in range(able.cpu_precision_combo.count())] == ["float32", "bfloat16"]
    unable = make_dialog(qtbot, AppSettings(cpu_precision="bfloat16"), None, default_library, bf16=False)
    assert not unable.cpu_precision_combo.isEnabled() and "AVX512_BF16" in unable.cpu_precision_combo.toolTip()
    assert unable.settings().cpu_precision == "float32"  # a settings file from another computer is corrected
    assert AppSettings(cpu_precision="float16").validated().cpu_precision == "float32"


def test_compute_device_follows_what_mlx_offers(qtbot, tmp_path, default_library):
    with_gpu = make_dialog(qtbot, AppSettings(compute_device="gpu"), None, default_library, gpu=True)
    assert with_gpu.device_combo.isEnabled() and with_gpu.device_combo.currentData() == "gpu"
    without = make_dialog(qtbot, AppSettings(compute_device="gpu"), None, default_library, gpu=False)
    assert not without.device_combo.isEnabled() and without.device_combo.currentData() == "cpu"
    assert "no GPU" in without.device_combo.toolTip()
    assert without.settings().compute_device == "gpu"  # kept for a machine that has one
    from mlx_sd.device import gpu_available
    real = make_dialog(qtbot, AppSettings(), None, default_library, gpu=None)
    assert real.device_combo.isEnabled() == gpu_available()


def test_a_missing_default_model_is_kept(qtbot, default_library):
    dialog = make_dialog(qtbot, AppSettings(default_model="gone"), None, default_library)
    assert dialog.model_combo.currentText() == "gone (not installed)"
    assert dialog.settings().default_model == "gone"


def record_one(library):
    store = HistoryStore(library)
    entry = store.add(Image.new("RGB", (32, 32), "red"), Generation("a red circle", "", "demo", 7, 32, 32, {}, "a red circle"))
    store.close()
    return entry


def test_moving_the_library_keeps_the_history(qtbot, monkeypatch, tmp_path, default_library):
    entry = record_one(default_library)
    (default_library / "models" / "mine").mkdir(parents=True)
    target = tmp_path / "elsewhere" / "My Library"
    path = tmp_path / "settings.json"
    dialog = make_dialog(qtbot, AppSettings(), path, default_library)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(target))
    dialog.choose_library()
    assert dialog.library_edit.text() == str(target)
    questions = []

    def ask(reply):
        def question(parent, title, text, *args):
            questions.append(title)
            return reply
        return question

    monkeypatch.setattr(QMessageBox, "question", ask(QMessageBox.StandardButton.Cancel))
    dialog.accept()  # the user said no: nothing moves, the dialog stays open
    assert dialog.isVisible() and default_library.is_dir() and not target.exists()
    monkeypatch.setattr(QMessageBox, "question", ask(QMessageBox.StandardButton.Yes))
    dialog.accept()
    assert questions == ["Move the Library", "Move the Library"]
    assert not dialog.isVisible()
    assert not default_library.exists() and is_library(target) and (target / "models" / "mine").is_dir()
    store = HistoryStore(target)
    moved = store.get(entry.id)
    assert moved.generation.prompt == "a red circle" and moved.image_path.is_file()
    assert moved.image_path.is_relative_to(target)
    store.close()
    assert load_settings(path).library_folder == str(target)


def test_switching_to_an_existing_library_or_refusing_a_foreign_folder(qtbot, monkeypatch, tmp_path, default_library):
    record_one(default_library)
    other = tmp_path / "other-library"
    record_one(other)
    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "letter.txt").write_text("hello")
    dialog = make_dialog(qtbot, AppSettings(), None, default_library)
    dialog.library_edit.setText(str(foreign))
    dialog.accept()
    assert dialog.isVisible()
    assert dialog.message.text() == f"{foreign} is not empty and is not an mlx-sd library; choose an empty or new folder."
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    moves = []
    dialog._move = lambda old, new: moves.append((old, new))
    dialog.library_edit.setText(str(other))
    with qtbot.waitSignal(dialog.settings_saved) as saved:
        dialog.accept()
    assert saved.args[0].library_folder == str(other)
    assert moves == [] and default_library.is_dir()  # switched, nothing moved


def test_a_fresh_install_switches_without_asking(qtbot, monkeypatch, tmp_path, default_library):
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: pytest.fail("nothing to move, nothing to ask"))
    dialog = make_dialog(qtbot, AppSettings(), None, default_library)
    dialog.library_edit.setText(str(tmp_path / "new"))
    with qtbot.waitSignal(dialog.settings_saved):
        dialog.accept()
    dialog = make_dialog(qtbot, AppSettings(library_folder=str(tmp_path / "new")), None, default_library)
    dialog.library_edit.setText(str(default_library))  # choosing the default folder stores ""
    assert dialog.settings().library_folder == ""


def test_a_failed_move_or_save_is_a_message(qtbot, monkeypatch, tmp_path, default_library):
    record_one(default_library)
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)

    def refuse(old, new):
        raise PermissionError(13, "Permission denied", str(new))

    dialog = make_dialog(qtbot, AppSettings(), None, default_library, move=refuse)
    dialog.library_edit.setText(str(tmp_path / "locked"))
    dialog.accept()
    assert dialog.isVisible() and dialog.message.text().startswith("The library could not be moved: ")
    # settings that cannot be written: the library is moved back so both stay in agreement
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    moves = []
    dialog = make_dialog(qtbot, AppSettings(), blocker / "settings.json", default_library,
                         move=lambda old, new: moves.append((old, new)))
    dialog.library_edit.setText(str(tmp_path / "new-place"))
    dialog.accept()
    assert dialog.isVisible() and dialog.message.text().startswith("The settings could not be saved: ")
    assert moves == [(default_library, tmp_path / "new-place"), (tmp_path / "new-place", default_library)]
