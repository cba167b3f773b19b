"""The app's Vary button (app.vary_control) and Extend buttons (app.outpaint_controls): a variation of the
shown picture (its seed, a new random variation seed), or the shown picture grown on one side."""

from __future__ import annotations

import pytest

from app.main_window import MainWindow
from app.outpaint_controls import install_outpaint_controls
from app.settings import AppSettings
from app.vary_control import NO_PICTURE_TEXT, install_vary_control
from app_support import QT_MARKS, ScriptedPipeline, fake_model_folder, scripted_loader

pytestmark = QT_MARKS
TIMEOUT = 20_000


@pytest.fixture
def scripted(qtbot, tmp_path):
    pipeline = ScriptedPipeline()
    fake_model_folder(tmp_path / "library" / "models" / "tiny", native=64)
    window = MainWindow(AppSettings(), tmp_path / "library", loader=scripted_loader(pipeline), demo_folder=None)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    return window, pipeline


def test_vary_reuses_the_shown_seed_with_a_random_variation_seed(qtbot, scripted) -> None:
    window, pipeline = scripted
    control = install_vary_control(window)
    control.button.click()
    assert window.statusBar().currentMessage() == NO_PICTURE_TEXT and pipeline.requests == []
    window.prompt_panel.prompt_edit.setPlainText("a lighthouse")
    window.parameters.set_values({"seed": 4242, "width": 64, "height": 64})
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT):
        window.generate()
    window.parameters.set_values({"seed": -1})  # Vary keeps the picture's seed whatever the field says
    control.strength.setValue(0.15)
    seen = set()
    for _ in range(2):
        with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT):
            control.button.click()
        varied = pipeline.requests[-1]
        assert (varied.seed, varied.variation_strength, varied.prompt) == (4242, 0.15, "a lighthouse")
        assert 0 <= varied.variation_seed and varied.variation_seed not in seen
        seen.add(varied.variation_seed)
    assert window.build_request().variation_strength == 0.0  # the next Generate is a plain one again


def test_extend_sends_the_shown_picture_as_the_init_image_with_one_side_grown(qtbot, scripted) -> None:
    window, pipeline = scripted
    controls = install_outpaint_controls(window)
    controls.buttons["right"].click()
    assert pipeline.requests == []
    window.parameters.set_values({"seed": 7, "width": 64, "height": 64})
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT):
        window.generate()
    shown = window.result_view.current_item().image
    controls.amount.setCurrentIndex(controls.amount.findData(64))
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT):
        controls.buttons["top"].click()
    grown = pipeline.requests[-1]
    assert grown.outpaint == (0, 0, 64, 0) and grown.init_image is shown and (grown.width, grown.height) == (64, 64)
    assert window.build_request().outpaint == (0, 0, 0, 0)
