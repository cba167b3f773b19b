"""A fresh install of the app, with no model of its own, draws a recognisable picture with the bundled
demo model: the real window, the real loader and pipeline, nothing scripted."""

from pathlib import Path

import pytest

from app.main_window import MainWindow
from app.settings import AppSettings
from app_support import QT_MARKS
from training.classify import classify

pytestmark = [*QT_MARKS, pytest.mark.slow]


def test_a_fresh_window_generates_with_the_demo_model(qtbot, tmp_path: Path) -> None:
    window = MainWindow(AppSettings(), tmp_path / "library", None)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    assert window.picker.current().name == "demo" and window.generate_button.isEnabled()
    assert (window.parameters.values()["width"], window.parameters.values()["height"]) == (64, 64)

    window.prompt_panel.prompt_edit.setPlainText("a green triangle on a white background")
    window.parameters.set_values({"seed": 2, "steps": 20, "cfg_scale": 6.0})
    with qtbot.waitSignal(window.controller.finished, timeout=120_000):
        assert window.generate() is not None

    item = window.result_view.model.item(0)
    label = classify(item.image)
    assert (label.colour, label.shape, label.background) == ("green", "triangle", "white"), label
    assert item.path.is_file() and item.path.is_relative_to(tmp_path / "library")
