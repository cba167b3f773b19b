"""The result view's Upscale control lists the library's upscaler models beside the filters; a model runs on the
generation thread with progress and Stop, and the saved picture carries A1111's postprocess fields."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.main_window import MainWindow
from app.settings import AppSettings
from app_support import QT_MARKS, fake_model_folder, open_window
from convert.upscaler_file import read_upscaler
from mlx_sd.image_metadata import read_infotext
from mlx_sd.infotext import parse_infotext
from mlx_sd.upscalers import DEFAULT_TILE, upscale_image
from test_app_drop_library import write_lora, write_upscaler

pytestmark = QT_MARKS
TIMEOUT = 20_000


@pytest.fixture
def library(tmp_path: Path) -> Path:
    root = tmp_path / "library"
    fake_model_folder(root / "models" / "tiny", native=64)
    (root / "upscalers").mkdir()
    write_upscaler(root / "upscalers" / "tiny-x2.safetensors")
    write_lora(root / "upscalers" / "not-an-upscaler.safetensors")
    return root


@pytest.fixture
def window(qtbot, library: Path) -> MainWindow:
    window = open_window(qtbot, library, settings=AppSettings(upscale_tile=16))
    window.prompt_panel.prompt_edit.setPlainText("a red cube")
    window.parameters.set_values({"steps": 2, "seed": 5, "width": 64, "height": 64})
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT):
        assert window.generate() is not None
    return window


def _items(window: MainWindow) -> list[str]:
    combo = window.result_view.method
    return [combo.itemText(i) for i in range(combo.count())]


def test_the_control_lists_library_models_after_the_filters(window: MainWindow) -> None:
    assert _items(window) == ["Nearest", "Bilinear", "Bicubic", "Lanczos", "", "not-an-upscaler", "tiny-x2"]
    assert AppSettings().upscale_tile == DEFAULT_TILE


def test_a_model_upscale_runs_with_progress_and_is_saved_with_postprocess_fields(
    qtbot, window: MainWindow, library: Path, tmp_path: Path
) -> None:
    view = window.result_view
    progress: list[tuple[int, int]] = []
    view.model_upscaler.progressed.connect(lambda done, total: progress.append((done, total)))
    view.factor.setCurrentText("2x")
    with qtbot.waitSignal(view.model_upscaler.finished, timeout=TIMEOUT):
        view.method.setCurrentText("tiny-x2")
        assert view.upscaling() and not view.save_button.isEnabled() and view.upscale_stop.isVisible()
    assert progress[-1] == (16, 16)  # 64x64 in tiles of 16
    assert view.upscale_stop.text() == "Stop 16/16"
    assert not view.upscaling() and view.save_button.isEnabled() and not view.upscale_stop.isVisible()
    network, _ = read_upscaler(library / "upscalers" / "tiny-x2.safetensors")
    expected = upscale_image(view.current_item().image, 2, network, tile=16)
    path = view.save_current(tmp_path / "up.png")
    with Image.open(path) as saved:
        assert saved.size == (128, 128)
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(expected))
    params = parse_infotext(read_infotext(path)).params
    assert params["Postprocess upscaler"] == "tiny-x2" and params["Postprocess upscale by"] == "2"
    assert params["Seed"] == "5"
    view.factor.setCurrentText("1x")  # no upscale: no postprocess fields
    assert "Postprocess" not in read_infotext(view.save_current(tmp_path / "plain.png"))


def test_stop_cancels_between_tiles(qtbot, window: MainWindow) -> None:
    view = window.result_view
    gate = threading.Event()
    window.controller.call(lambda worker: gate.wait(10))  # the generation thread is busy: the upscale queues
    view.factor.setCurrentText("2x")
    view.method.setCurrentText("tiny-x2")
    assert view.upscale_stop.isVisible()
    with qtbot.waitSignal(view.model_upscaler.cancelled, timeout=TIMEOUT):
        view.upscale_stop.click()
        gate.set()
    assert view.factor.currentText() == "1x" and view.save_button.isEnabled() and not view.upscale_stop.isVisible()


def test_a_file_that_is_no_upscaler_is_one_line(qtbot, window: MainWindow) -> None:
    view = window.result_view
    view.factor.setCurrentText("2x")
    with qtbot.waitSignal(view.model_upscaler.failed, timeout=TIMEOUT):
        view.method.setCurrentText("not-an-upscaler")
    assert window.message_bar.kind == "error"
    assert "The upscaler model not-an-upscaler could not be used" in window.message_bar.text()
    assert "a LoRA" in window.message_bar.text()
    assert view.method.currentText() == "Lanczos" and view.save_button.isEnabled()
