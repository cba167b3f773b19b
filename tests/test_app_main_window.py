"""The main window offscreen: its widgets, presets, seed, sizes, results and their actions, messages.

Generation here goes through ScriptedPipeline (Pipeline.generate's contract, no model) so that
failures a tiny model cannot produce (out of memory) can be shown; tests/test_app_generation.py runs
the real pipeline on a tiny model."""

import errno
from pathlib import Path


import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from app import history_store
from app.history_store import HistoryError, HistoryStore
from app.main_window import READY_TEXT, MainWindow, format_seconds, progress_text
from app.generation_worker import StepReport, load_pipeline
from app.model_picker import DEMO_READY_TEXT, NO_MODEL_TEXT
from app.result_view import ResultItem, ResultsModel, ResultView, qimage_to_pil, reveal_command, upscale
from app.settings import AppSettings, load_settings, save_settings
from app_support import QT_MARKS, ScriptedPipeline, fake_model_folder, noise_image, open_window, scripted_loader
from mlx_sd.image_metadata import read_infotext
from mlx_sd.infotext import parse_infotext

pytestmark = QT_MARKS
TIMEOUT = 20_000


@pytest.fixture
def library(tmp_path: Path) -> Path:
    folder = tmp_path / "library"
    fake_model_folder(folder / "models" / "tiny", native=512)
    return folder


def generate(qtbot, window: MainWindow) -> None:
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT):
        assert window.generate() is not None


def test_window_lists_the_model_and_uses_its_native_size(qtbot, library: Path) -> None:
    window = open_window(qtbot, library)
    assert window.picker.current().name == "tiny"
    assert window.parameters.values()["width"] == 512
    window.parameters.set_native_size(1024)
    assert (window.parameters.values()["width"], window.parameters.values()["height"]) == (1024, 1024)
    assert window.generate_button.isEnabled() and not window.cancel_button.isEnabled()


def test_no_model_explains_how_to_get_one(qtbot, tmp_path: Path) -> None:
    window = open_window(qtbot, tmp_path / "empty")
    assert window.picker.current() is None
    assert window.result_view.canvas._placeholder.startswith(NO_MODEL_TEXT)
    assert not window.generate_button.isEnabled()
    assert window.generate() is None
    assert window.message_bar.isVisible() and "no model" in window.message_bar.text().lower()


def test_demo_model_is_offered_when_none_is_installed(qtbot, tmp_path: Path) -> None:
    demo = fake_model_folder(tmp_path / "resources" / "demo", native=256)
    window = MainWindow(AppSettings(), tmp_path / "empty", None, loader=scripted_loader(ScriptedPipeline()), demo_folder=demo)
    qtbot.addWidget(window)
    assert window.picker.current().name == "demo" and window.picker.current().bundled
    assert window.picker.combo.currentText() == "Demo model (shapes)"
    placeholder = window.result_view.canvas._placeholder
    # the demo is a model: the window is ready to generate, and says how to get a real one
    assert placeholder.startswith(READY_TEXT) and DEMO_READY_TEXT in placeholder and NO_MODEL_TEXT not in placeholder
    assert window.parameters.values()["width"] == 256 and window.generate_button.isEnabled()
    fake_model_folder(tmp_path / "empty" / "models" / "mine", native=512)
    window.refresh_models("mine")
    assert window.picker.current().name == "mine" and window.result_view.canvas._placeholder == READY_TEXT


def test_generate_shows_results_and_records_them(qtbot, library: Path) -> None:
    pipeline = ScriptedPipeline()
    window = open_window(qtbot, library, pipeline)
    window.prompt_panel.prompt_edit.setPlainText("a red cube")
    window.prompt_panel.set_affixes("masterpiece", "sharp")
    window.parameters.set_values({"steps": 3, "batch_size": 2, "batch_count": 2, "seed": 40})
    recorded = []
    window.imageRecorded.connect(recorded.append)
    generate(qtbot, window)

    request = pipeline.requests[-1]
    assert request.prompt == "masterpiece, a red cube, sharp"
    assert window.result_view.model.rowCount() == 4 and window.result_view.showing_grid()
    assert len(window.result_view.canvas.image_rects()) == 4 and window.result_view.grid_button.isVisible()
    assert [e.generation.seed for e in recorded] == [40, 41, 42, 43]
    store = HistoryStore(library)
    try:
        assert store.count() == 4
    finally:
        store.close()
    assert window.result_view.current_item().path == recorded[0].image_path
    assert window.generate_button.isEnabled() and window.progress.value() == 0  # idle: empty, still in place
    assert window.parameters.seed.reuse.isEnabled()
    window.result_view.select(2)
    assert window.result_view.current_item().seed == 42


def test_ctrl_enter_generates(qtbot, library: Path) -> None:
    window = open_window(qtbot, library)
    window.parameters.set_values({"steps": 2})
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT):
        qtbot.keyClick(window.prompt_panel.prompt_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert window.prompt_panel.prompt() == ""  # the shortcut generated instead of adding a line
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT):
        qtbot.keyClick(window.parameters.steps, Qt.Key.Key_Enter, Qt.KeyboardModifier.ControlModifier)


def test_seed_dice_and_reuse_last(qtbot, library: Path) -> None:
    window = open_window(qtbot, library)
    seed = window.parameters.seed
    assert seed.seed() == -1 and not seed.reuse.isEnabled()
    seed.dice.click()
    assert 0 <= seed.seed() < 2**32
    window.parameters.set_values({"steps": 1, "seed": -1})
    generate(qtbot, window)
    assert seed.seed() == -1
    seed.reuse.click()
    assert seed.seed() == window.result_view.current_item().seed == 1234
    seed.set_seed(4_000_000_000)  # past a QSpinBox's range
    assert window.build_request().seed == 4_000_000_000


def test_an_out_of_range_seed_is_refused_not_made_random(qtbot, library: Path) -> None:
    window = open_window(qtbot, library)
    window.parameters.seed.edit.setText("99999999999999999999")  # twenty digits pass the field's validator
    assert window.build_request().seed == 99_999_999_999_999_999_999
    assert window.generate() is None
    assert window.message_bar.kind == "error"
    assert "seed = 99999999999999999999" in window.message_bar.text() and str(2**64 - 1) in window.message_bar.text()
    window.parameters.seed.edit.setText("")  # an empty field means random
    assert window.build_request().seed == -1


def test_aspect_buttons_and_custom_size(qtbot, library: Path) -> None:
    window = open_window(qtbot, library)
    panel = window.parameters
    panel.set_native_size(1024)
    buttons = {b.property("aspect"): b for b in panel.aspect_group.buttons()}
    buttons["portrait"].click()
    assert (panel.values()["width"], panel.values()["height"]) == (832, 1216)
    assert panel.aspect() == "portrait"
    panel.set_native_size(512)  # another model: the chosen aspect is snapped again
    assert (panel.values()["width"], panel.values()["height"]) == (384, 576)
    panel.width_spin.setValue(520)
    assert panel.aspect() is None and not any(b.isChecked() for b in buttons.values())
    panel.set_native_size(1024)  # an explicit size is kept
    assert panel.values()["width"] == 520


def test_presets_apply_save_restart_delete(qtbot, library: Path, tmp_path: Path) -> None:
    settings_path = tmp_path / "config" / "settings.json"
    window = open_window(qtbot, library, settings=AppSettings(), settings_path=settings_path)
    panel = window.parameters
    assert panel.preset_names() == ["Portrait", "Scene", "Quick", "Quality"]
    panel.apply_preset("Scene")
    values = panel.values()
    assert (values["width"], values["height"], values["steps"], values["schedule"]) == (576, 384, 30, "Karras")
    panel.apply_preset("Quick")
    assert panel.values()["steps"] == 12 and panel.values()["width"] == 576  # Quick keeps the size

    panel.set_values({"sampler": "Euler a", "steps": 17, "cfg_scale": 4.5})
    panel.aspect_group.buttons()[3].click()  # wide
    window.save_preset("Mine")
    assert load_settings(settings_path).user_presets[0].params["aspect"] == "wide"
    window.save_preset("Quality")  # a built-in's name
    assert "built-in preset" in window.message_bar.text()
    window.close()

    again = open_window(qtbot, library, settings=load_settings(settings_path), settings_path=settings_path)
    assert again.parameters.preset_names()[-1] == "Mine"
    again.parameters.apply_preset("Portrait")
    again.parameters.apply_preset("Mine")
    values = again.parameters.values()
    assert (values["sampler"], values["steps"], values["cfg_scale"]) == ("Euler a", 17, 4.5)
    assert (values["width"], values["height"]) == (640, 384)
    assert again.parameters.delete_preset_button.isEnabled()
    again.parameters.delete_preset_button.click()
    assert load_settings(settings_path).user_presets == []
    assert "Mine" not in again.parameters.preset_names()


def test_prefix_suffix_saved_in_settings(qtbot, library: Path, tmp_path: Path) -> None:
    settings_path = tmp_path / "settings.json"
    window = open_window(qtbot, library, settings_path=settings_path)
    window.prompt_panel.prefix_edit.setText("masterpiece")
    window.prompt_panel.prefix_edit.editingFinished.emit()
    assert load_settings(settings_path).prompt_prefix == "masterpiece"
    window.prompt_panel.prompt_edit.setPlainText("a cat")
    assert window.build_request().prompt == "masterpiece, a cat"


def test_progress_and_preview_during_a_run(qtbot, library: Path) -> None:
    window = open_window(qtbot, library, ScriptedPipeline(step_seconds=0.05))
    window.parameters.set_values({"steps": 6, "batch_count": 2})
    reports = []
    window.controller.progressed.connect(reports.append)
    with qtbot.waitSignal(window.controller.preview, timeout=TIMEOUT):
        window.generate()
    assert window.cancel_button.isEnabled() and not window.generate_button.isEnabled()
    assert window.result_view._previewing
    qtbot.waitUntil(lambda: len(reports) >= 8, timeout=TIMEOUT)
    assert window.progress.maximum() == 12
    assert window.progress_label.text().startswith("Step ") and "run 2/2" in window.progress_label.text()
    qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT).wait()
    assert [r.done for r in reports] == list(range(1, 13))
    assert reports[-1].seconds_left == 0.0


def test_cancel_stops_within_a_step_and_records_nothing(qtbot, library: Path) -> None:
    window = open_window(qtbot, library, ScriptedPipeline(step_seconds=0.05))
    window.parameters.set_values({"steps": 200})
    reports = []
    window.controller.progressed.connect(reports.append)
    with qtbot.waitSignal(window.controller.progressed, timeout=TIMEOUT):
        window.generate()
    with qtbot.waitSignal(window.controller.cancelled, timeout=TIMEOUT):
        window.cancel_button.click()
        steps_at_cancel = window.progress.value()
    assert len(reports) <= steps_at_cancel + 1
    assert window.progress_label.text() == "Cancelled; nothing was saved"
    assert window.generate_button.isEnabled() and window.result_view.model.rowCount() == 0
    assert not (library / history_store.IMAGES_DIR).exists()


@pytest.mark.parametrize(
    "failure, title",
    [
        (MemoryError("out of memory"), "Out of memory"),
        (RuntimeError("[metal::malloc] Attempting to allocate 99999999999 bytes"), "Out of memory"),
        (KeyError("boom"), "Generation failed"),
    ],
)
def test_failures_become_messages(qtbot, library: Path, failure: BaseException, title: str) -> None:
    window = open_window(qtbot, library, ScriptedPipeline(fail=failure, fail_at_step=2))
    window.parameters.set_values({"steps": 3})
    with qtbot.waitSignal(window.controller.failed, timeout=TIMEOUT):
        window.generate()
    assert window.message_bar.isVisible() and window.message_bar.kind == "error"
    assert title in window.message_bar.text()
    assert window.generate_button.isEnabled()
    window.parameters.set_values({"steps": 1})  # the window still works afterwards
    generate(qtbot, window)
    assert not window.message_bar.isVisible()


def test_impossible_size_is_a_message(qtbot, library: Path) -> None:
    window = open_window(qtbot, library)
    window.parameters.set_size(70, 64)
    assert window.generate() is None
    assert "width = 70" in window.message_bar.text() and "multiple of 8" in window.message_bar.text()


def test_broken_model_is_a_message(qtbot, library: Path) -> None:
    window = open_window(qtbot, library, loader=load_pipeline)  # the folder has model.json, no weights
    with qtbot.waitSignal(window.controller.failed, timeout=TIMEOUT):
        window.generate()
    assert "The model could not be loaded" in window.message_bar.text()
    assert "unet" in window.message_bar.text() and "missing" in window.message_bar.text()


def test_full_disk_is_a_message_and_images_stay(qtbot, library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self, image, generation):
        raise HistoryError("could not record the image") from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(HistoryStore, "add", full)
    window = open_window(qtbot, library)
    window.parameters.set_values({"steps": 1})
    generate(qtbot, window)
    assert "The disk is full" in window.message_bar.text()
    assert window.result_view.model.rowCount() == 1  # the image is still shown and can be saved
    assert window.result_view.current_item().path is None and not window.result_view.reveal_button.isEnabled()


def test_results_model(qtmodeltester) -> None:
    model = ResultsModel()
    model.set_items([ResultItem(noise_image(s, 32, 24), s, f"infotext {s}", Path(f"/x/{s}.png")) for s in (5, 6, 7)])
    qtmodeltester.check(model, force_py=True)
    index = model.index(1)
    assert model.data(index) == "Seed 6"
    assert model.data(index, ResultsModel.SeedRole) == 6
    assert model.data(index, ResultsModel.PathRole) == "/x/6.png"
    assert model.data(index, Qt.ItemDataRole.ToolTipRole) == "infotext 6"
    model.set_items([])
    qtmodeltester.check(model, force_py=True)


def test_save_png_jpeg_webp_with_metadata_and_upscale(qtbot, library: Path, tmp_path: Path) -> None:
    window = open_window(qtbot, library)
    window.prompt_panel.prompt_edit.setPlainText("a blue sphere, studio light")
    window.parameters.set_values({"steps": 2, "seed": 9, "width": 64, "height": 64})
    generate(qtbot, window)
    view = window.result_view
    for suffix in (".png", ".jpg", ".webp"):
        path = view.save_current(tmp_path / f"out{suffix}")
        info = parse_infotext(read_infotext(path))
        assert info.prompt == "a blue sphere, studio light" and info.params["Seed"] == "9"
        with Image.open(path) as saved:
            assert saved.size == (64, 64)
    view.factor.setCurrentText("4x")
    view.method.setCurrentText("Nearest")
    path = view.save_current(tmp_path / "big.png")
    original = np.asarray(view.current_item().image)
    with Image.open(path) as saved:
        assert saved.size == (256, 256)
        assert np.array_equal(np.asarray(saved.convert("RGB"))[::4, ::4], original)  # nearest repeats pixels
    params = parse_infotext(read_infotext(path)).params
    assert params["Postprocess upscale by"] == "4" and params["Postprocess upscaler"] == "Nearest"
    view.actual_button.click()  # 100%: the upscaled image's own pixels
    rect = view.canvas.image_rect()
    assert (rect.width(), rect.height()) == (256, 256)
    shown = qimage_to_pil(view.canvas.grab(rect).toImage()).convert("RGB")
    with Image.open(path) as saved:
        assert np.array_equal(np.asarray(shown), np.asarray(saved.convert("RGB")))  # what is shown is what is saved

    view.copy_current()
    copied = qimage_to_pil(QGuiApplication.clipboard().image())
    assert copied.size == (256, 256)


def test_a_large_upscale_is_resampled_to_the_screen_size(qtbot) -> None:
    view = ResultView()
    qtbot.addWidget(view)
    view.resize(700, 700)
    view.show()
    qtbot.waitExposed(view)
    view.set_results([ResultItem(noise_image(1, 1024, 768), 1, "x")])
    view.factor.setCurrentText("4x")
    view.canvas.grab()  # paints the canvas
    rect = view.canvas.image_rect()
    assert rect.width() <= view.canvas.width() and abs(rect.width() / rect.height() - 4 / 3) < 0.01
    assert view.canvas._shown[0][1].size() == rect.size()  # not a 4096 x 3072 image


def test_upscale_filters_differ() -> None:
    image = noise_image(3, 16, 16)
    results = {m: np.asarray(upscale(image, 2, m), dtype=np.int16) for m in ("Nearest", "Bilinear", "Bicubic", "Lanczos")}
    assert all(r.shape == (32, 32, 3) for r in results.values())
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(results[a] - results[b]).max() > 0, (a, b)
    assert upscale(image, 1, "Lanczos") is image
    with pytest.raises(ValueError, match="upscale filter must be one of"):
        upscale(image, 2, "Magic")


def test_reveal_command() -> None:
    path = Path("/lib/images/a.png")
    assert reveal_command(path, "darwin") == ["open", "-R", "/lib/images/a.png"]
    assert reveal_command(path, "win32") == ["explorer", "/select,/lib/images/a.png"]
    assert reveal_command(path, "linux") is None


def test_progress_text() -> None:
    report = StepReport(1, 5, 20, 1, 3, 25, 60, 75.0)
    assert progress_text(report) == "Step 5/20 · run 2/3 · 1 min 15 s left"
    assert progress_text(StepReport(1, 1, 4, 0, 1, 1, 4, None)) == "Step 1/4"
    assert progress_text(StepReport(1, 4, 4, 0, 1, 4, 4, 0.0)) == "Step 4/4 · decoding the image…"
    assert format_seconds(0.2) == "under a second" and format_seconds(12.4) == "12 s"


def test_settings_applied(qtbot, library: Path, tmp_path: Path) -> None:
    window = open_window(qtbot, library)
    settings = AppSettings(prompt_prefix="p", prompt_suffix="s", output_format="webp")
    save_settings(settings, tmp_path / "s.json")
    window.apply_settings(load_settings(tmp_path / "s.json"))
    assert (window.prompt_panel.prefix(), window.prompt_panel.suffix()) == ("p", "s")
    assert window.result_view.default_save_path().suffix == ".webp"


def test_plug_in_points(qtbot, library: Path) -> None:
    from PySide6.QtWidgets import QLabel

    window = open_window(qtbot, library)
    show = window.add_panel("History", QLabel("history"))
    assert show in window.menu("View").actions()
    show.trigger()
    assert window.tabs.tabText(window.tabs.currentIndex()) == "History"
    show.trigger()
    assert window.tabs.currentIndex() == 0
    assert window.menu("Models") is window.menu("Models")
    window.reuse_seed(77)
    assert window.parameters.seed.seed() == 77
