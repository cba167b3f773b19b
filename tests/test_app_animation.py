"""The app's Animation tab (app.animation_panel, app.animation_runner): the real window and demo model
animate a blend frame by frame with progress and cancel, the frames equal `mlx-sd animate`'s, play in a
loop, export as PNGs with their own infotext plus the animation; and the tab fits small screens.

Set APP_SCREENSHOTS to a folder to keep the screenshots."""

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QSize
from PySide6.QtWidgets import QApplication

import mlx_sd.generation as generation
from app.animation_panel import AnimationPanel, install_animation_panel
from app.blend_panel import BlendPanel, install_blend_panel
from app.drop_handler import classify_file
from app.main import build_window
from app.main_window import MainWindow
from app.settings import AppSettings
from app_support import QT_MARKS
from cli.main import main as cli_main
from mlx_sd.image_metadata import read_infotext
from mlx_sd.infotext import parse_infotext
from test_app_layout import fully_shown, overlapping_siblings

pytestmark = QT_MARKS
TIMEOUT = 120_000


@pytest.fixture
def window(qtbot, tmp_path: Path) -> MainWindow:
    window = MainWindow(AppSettings(), tmp_path / "library", None)  # the bundled demo model, the real loader
    qtbot.addWidget(window)
    assert window.picker.current().name == "demo"
    window.parameters.set_values({"seed": 7, "steps": 2, "width": 64, "height": 64})
    window.prompt_panel.set_prompts("ignored by the frames", "")
    return window


@pytest.fixture
def panel(window) -> AnimationPanel:
    panel = install_animation_panel(window, install_blend_panel(window))
    panel.from_edit.setText("a red circle")
    panel.to_edit.setText("a blue square")
    panel.frames_spin.setValue(3)
    return panel


def run(qtbot, panel: AnimationPanel) -> list[tuple[int, int, int]]:
    progress: list[tuple[int, int, int]] = []
    panel.runner.progressed.connect(lambda *report: progress.append(report))
    with qtbot.waitSignal(panel.runner.finished, timeout=TIMEOUT):
        assert panel.animate() is not None
        assert panel.cancel_button.isEnabled() and not panel.animate_button.isEnabled()
    QApplication.processEvents()
    return progress


def test_frames_arrive_one_by_one_and_equal_the_clis(qtbot, panel: AnimationPanel, tmp_path: Path) -> None:
    arrived: list[int] = []
    panel.runner.frameReady.connect(lambda frame: arrived.append(panel.strip.count()))
    progress = run(qtbot, panel)
    assert progress == [(i, s, 2) for i in range(3) for s in (1, 2)]
    assert arrived == [1, 2, 3] and panel.strip.count() == 3  # each in the strip as it came
    prompts = [parse_infotext(f.infotext).prompt for f in panel.frames]
    assert prompts == ["a red circle :1 AND a blue square :0", "a red circle :0.5 AND a blue square :0.5",
                       "a red circle :0 AND a blue square :1"]
    assert panel.status.text().startswith("3 frames") and panel.export_button.isEnabled()

    params = panel._window.parameters.values()
    code = cli_main(["animate", "--model", "demo", "--from", "a red circle", "--to", "a blue square", "--frames", "3",
                     "--seed", "7", "--steps", "2", "--width", "64", "--height", "64", "--cfg", str(params["cfg_scale"]),
                     "--sampler", params["sampler"], "--schedule", params["schedule"], "--output", str(tmp_path / "cli")])
    assert code == 0
    cli_frames = sorted((tmp_path / "cli").glob("*.png"))
    for frame, path in zip(panel.frames, cli_frames, strict=True):
        assert np.array_equal(np.asarray(frame.image), np.asarray(Image.open(path)))


def test_the_viewer_loops_and_scrubs(qtbot, panel: AnimationPanel) -> None:
    panel.fps_spin.setValue(50)
    run(qtbot, panel)
    assert panel.play_button.isChecked() and panel.play_button.text() == "Pause"  # plays once done
    seen: set[int] = set()
    panel.scrubber.valueChanged.connect(seen.add)
    qtbot.waitUntil(lambda: seen >= {0, 1, 2}, timeout=5_000)  # every frame, round again from the last
    panel.play_button.click()
    assert not panel.play_button.isChecked() and not panel._timer.isActive()
    panel.strip.setCurrentRow(1)
    assert panel.scrubber.value() == 1 and panel.position_label.text() == "2/3"
    assert panel.viewer.pixmap() is not None and not panel.viewer.pixmap().isNull()


def test_export_writes_frames_with_their_infotext_and_the_animations(qtbot, panel: AnimationPanel, tmp_path: Path) -> None:
    panel.seed_to_check.setChecked(True)
    panel.seed_to_edit.setText("9")
    panel.format_combo.setCurrentIndex(panel.format_combo.findData("gif"))
    run(qtbot, panel)
    folder = tmp_path / "export"
    with qtbot.waitSignal(panel.exported, timeout=TIMEOUT) as blocker:
        panel.export_to(folder)
    paths = blocker.args[0]
    mp4 = [".mp4"] if pytest.importorskip("imageio_ffmpeg") else []
    assert [p.suffix for p in paths] == [".png"] * 3 + [".gif"] + mp4 and all(p.parent == folder for p in paths)
    texts = [read_infotext(p) for p in paths[:3]]
    assert [t == f.infotext for t, f in zip(texts, panel.frames)] == [True] * 3
    assert parse_infotext(texts[2]).params["Variation seed"] == "9"
    with Image.open(paths[3]) as gif:
        assert gif.n_frames == 3
    QApplication.processEvents()
    assert panel.status.text().startswith("Exported 3 frames and ") and "gif" in panel.status.text()

    dropped = classify_file(paths[1])  # the middle frame, dropped back on the window: its blend returns
    panel._window.restore_parameters(dropped.parameters, dropped.name)
    blend = next(w for w in map(panel._window.tabs.widget, range(panel._window.tabs.count())) if isinstance(w, BlendPanel))
    assert [(r.prompt_edit.text(), r.opacity.value()) for r in blend.rows] == [("a red circle", 50), ("a blue square", 50)]
    assert blend.enabled_check.isChecked() and panel._window.build_request().prompt == parse_infotext(texts[1]).prompt


def test_cancel_keeps_the_frames_done(qtbot, panel: AnimationPanel) -> None:
    panel.frames_spin.setValue(6)
    panel.runner.frameReady.connect(lambda frame: frame.index == 0 and panel.cancel())
    with qtbot.waitSignal(panel.runner.cancelled, timeout=TIMEOUT):
        panel.animate()
    QApplication.processEvents()
    assert 1 <= len(panel.frames) < 6 and panel.strip.count() == len(panel.frames)
    assert panel.animate_button.isEnabled() and panel.export_button.isEnabled()
    assert "Cancelled after" in panel.status.text()


def test_prompts_come_from_the_blend_tab_and_bad_input_says_why(qtbot, window: MainWindow) -> None:
    blend = install_blend_panel(window)
    panel = install_animation_panel(window, blend)
    assert panel.animate() is None and "two prompts" in window.message_bar._label.text()
    panel.use_blend_prompts()
    assert "fewer than two" in window.message_bar._label.text()
    blend.rows[0].prompt_edit.setText("a zombie")
    blend.rows[1].prompt_edit.setText("a clown")
    blend.mode_combo.setCurrentIndex(blend.mode_combo.findData("embedding"))
    panel.use_blend_prompts()
    assert (panel.from_edit.text(), panel.to_edit.text(), panel.animation().blend) == ("a zombie", "a clown", "embedding")
    panel.to_edit.setText("a clown AND a ghost")
    assert panel.animate() is None and "without AND" in window.message_bar._label.text()
    assert not panel.runner.running


@pytest.mark.parametrize("width,height", [(1024, 640), (1280, 800)])
def test_the_tab_fits_small_screens(qtbot, panel: AnimationPanel, width: int, height: int, tmp_path: Path) -> None:
    window = panel._window
    run(qtbot, panel)
    panel.play_button.click()  # paused on a frame
    window.show()
    window.resize(width, height)
    qtbot.waitUntil(lambda: window.size() == QSize(width, height), timeout=10_000)
    window.tabs.setCurrentWidget(panel)
    QApplication.processEvents()
    folder = Path(os.environ.get("APP_SCREENSHOTS", "") or tmp_path)
    assert window.grab().save(str(folder / f"animation-{width}x{height}.png"))
    for widget in (panel.from_edit, panel.to_edit, panel.from_blend_button, panel.frames_spin, panel.fps_spin,
                   panel.mode_combo, panel.seed_to_check, panel.seed_to_edit, panel.animate_button, panel.cancel_button,
                   panel.play_button, panel.scrubber, panel.strip, panel.format_combo, panel.export_button):
        assert fully_shown(widget), type(widget).__name__
    assert overlapping_siblings(panel) == []
    assert panel.viewer.height() >= 150


def test_too_large_asks_as_generate_does(qtbot, panel: AnimationPanel, monkeypatch) -> None:
    monkeypatch.setattr(generation, "machine_memory", lambda: 1 << 20)
    asked = []
    panel._window.ask_memory = lambda parent, error: asked.append(error.needed) or len(asked) > 1
    with qtbot.waitSignal(panel.runner.tooLarge, timeout=TIMEOUT):
        panel.animate()
    QApplication.processEvents()
    assert len(asked) == 1 and panel.frames == [] and panel.animate_button.isEnabled()  # Cancel: nothing ran
    with qtbot.waitSignal(panel.runner.finished, timeout=TIMEOUT):
        panel.animate()  # asked again, and this time the answer is to go ahead
    assert len(asked) == 2 and len(panel.frames) == 3


def test_the_app_has_the_tab(qtbot, tmp_path: Path) -> None:
    window = build_window(AppSettings(library_folder=str(tmp_path / "library")), None)
    qtbot.addWidget(window)
    assert "Animation" in [a.text() for a in window.menu("View").actions()]
    assert any(isinstance(window.tabs.widget(i), AnimationPanel) for i in range(window.tabs.count()))
    window.close()


def test_closing_the_window_stops_a_running_animation(qtbot, panel: AnimationPanel) -> None:
    panel.frames_spin.setValue(50)
    with qtbot.waitSignal(panel.runner.frameReady, timeout=TIMEOUT):
        panel.animate()
    started = time.monotonic()
    panel._window.close()  # waits for the generation thread, which ends once the animation stops
    assert time.monotonic() - started < 5 and len(panel.frames) < 50
