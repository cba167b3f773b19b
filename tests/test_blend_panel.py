"""The app's Blend tab (app.blend_panel): prompts with opacity sliders become one AND prompt with
weights, or an embedding blend, in the window's requests; off, the prompt box is used as before."""

import pytest

from app.blend_panel import BlendPanel, install_blend_panel
from app.main_window import MainWindow
from app.settings import AppSettings
from app_support import QT_MARKS, ScriptedPipeline, scripted_loader

pytestmark = QT_MARKS


@pytest.fixture
def window(qtbot, tmp_path):
    window = MainWindow(AppSettings(), tmp_path / "library", loader=scripted_loader(ScriptedPipeline()), demo_folder=None)
    qtbot.addWidget(window)
    return window


def test_opacities_become_weights_that_sum_to_one(qtbot):
    panel = BlendPanel()
    qtbot.addWidget(panel)
    first, second = panel.rows
    first.prompt_edit.setText("a zombie")
    second.prompt_edit.setText(" a clown ")
    second.opacity.setValue(25)
    assert second.opacity_label.text() == "25%"
    assert panel.parts() == [("a zombie", 0.8), ("a clown", 0.2)]
    assert panel.blend_prompt() == "a zombie :0.8 AND a clown :0.2"
    third = panel.add_row()
    third.prompt_edit.setText("a ghost")
    third.opacity.setValue(0)  # left out, as an empty prompt is
    panel.add_row()
    assert panel.blend_prompt() == "a zombie :0.8 AND a clown :0.2"
    panel.remove_row(first)
    assert panel.blend_prompt() == "a clown :1"


def test_the_window_draws_the_blend_only_when_it_is_on(window):
    panel = install_blend_panel(window)
    window.prompt_panel.set_prompts("a castle", "blurry")
    panel.rows[0].prompt_edit.setText("a zombie")
    panel.rows[1].prompt_edit.setText("a clown")
    assert window.build_request().prompt == "a castle"
    panel.enabled_check.setChecked(True)
    request = window.build_request()
    assert (request.prompt, request.negative_prompt, request.and_blend) == (
        "a zombie :0.5 AND a clown :0.5", "blurry", "weights",
    )
    panel.mode_combo.setCurrentIndex(panel.mode_combo.findData("embedding"))
    assert window.build_request().and_blend == "embedding"
    for row in panel.rows:
        row.prompt_edit.clear()
    assert window.build_request().prompt == "a castle"  # an empty blend: the prompt box


def test_restoring_a_frames_parameters_brings_its_blend_back(window):
    panel = install_blend_panel(window)
    frame = "a zombie :0.333333 AND a clown :0.666667\nSteps: 3, Seed: 7, Size: 64x64, Prompt blend: embedding"
    window.restore_parameters(frame, "frame 2")
    assert [row.prompt_edit.text() for row in panel.rows] == ["a zombie", "a clown"]
    assert [row.opacity.value() for row in panel.rows] == [33, 67]
    assert panel.enabled_check.isChecked() and panel.mode_combo.currentData() == "embedding"
    request = window.build_request()  # the exact weights, not the sliders' rounding
    assert (request.prompt, request.and_blend, request.seed) == ("a zombie :0.333333 AND a clown :0.666667", "embedding", 7)
    assert "Blend tab" in window.message_bar._label.text()
    panel.rows[0].opacity.setValue(50)  # a slider moved: its own value from now on
    assert panel.blend_prompt() == "a zombie :0.428571 AND a clown :0.571429"  # 50 against 66.6667
    window.restore_parameters("a castle :1.2 AND a forest :0.8\nSteps: 3, Seed: 7, Size: 64x64")  # no blend: the prompt box
    assert not panel.enabled_check.isChecked()
    assert window.build_request().prompt == "a castle :1.2 AND a forest :0.8"
