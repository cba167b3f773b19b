"""The app's "Hires fix" section: its values become the request's hires fields, a dropped picture's
infotext restores them, the library's upscaler models are offered, and it fits the window when open.

Set APP_SCREENSHOTS to a folder to keep screenshots of the open section at 1024x640 and 1280x800."""

import os
from pathlib import Path

import pytest
from PySide6.QtCore import QSize
from PySide6.QtWidgets import QApplication, QScrollArea

from app_support import QT_MARKS, fake_model_folder, open_window

pytestmark = QT_MARKS


@pytest.fixture
def library(tmp_path: Path) -> Path:
    folder = tmp_path / "library"
    fake_model_folder(folder / "models" / "tiny", native=64)
    (folder / "upscalers").mkdir()
    (folder / "upscalers" / "4x-UltraSharp.pth").write_bytes(b"")
    return folder


def test_the_section_sets_the_request_and_offers_library_models(qtbot, library: Path) -> None:
    window = open_window(qtbot, library)
    hires = window.parameters.hires
    assert window.build_request().hires_scale == 0.0  # off until enabled
    names = [hires.upscaler.itemText(i) for i in range(hires.upscaler.count())]
    assert names[0] == "Latent" and names[-1] == "4x-UltraSharp" and "Lanczos" in names
    hires.enabled.setChecked(True)
    hires.upscaler.setCurrentText("4x-UltraSharp")
    hires.steps.setValue(10)
    hires.denoise.setValue(0.45)
    request = window.build_request()
    assert (request.hires_scale, request.hires_upscaler, request.hires_steps, request.hires_denoise) == (2.0, "4x-UltraSharp", 10, 0.45)
    hires.width_spin.setValue(1024)
    assert not hires.scale.isEnabled()
    request = window.build_request()
    assert (request.hires_scale, request.hires_width, request.hires_height) == (0.0, 1024, 0)


def test_a_dropped_infotext_restores_hires_fix(qtbot, library: Path) -> None:
    window = open_window(qtbot, library)
    text = ("a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 64x64, Denoising strength: 0.55, "
            "Hires upscale: 1.5, Hires steps: 12, Hires upscaler: Latent (bicubic)")
    assert window.restore_parameters(text) == []
    request = window.build_request()
    assert (request.hires_scale, request.hires_steps, request.hires_denoise, request.hires_upscaler) == (1.5, 12, 0.55, "Latent (bicubic)")
    notes = window.restore_parameters(text.replace("Latent (bicubic)", "R-ESRGAN 4x+"))
    assert notes == ["hires upscaler 'R-ESRGAN 4x+' is not in the library, kept Latent (bicubic)"]
    window.restore_parameters("a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 64x64")
    assert window.build_request().hires_scale == 0.0 and not window.parameters.hires.enabled.isChecked()


@pytest.mark.parametrize("width, height", [(1024, 640), (1280, 800)])
def test_the_open_section_fits_the_window(qtbot, library: Path, width: int, height: int) -> None:
    window = open_window(qtbot, library)
    window.resize(width, height)
    qtbot.waitUntil(lambda: window.size() == QSize(width, height), timeout=20_000)
    window.parameters.hires_section.set_expanded(True)
    window.parameters.hires.enabled.setChecked(True)
    QApplication.processEvents()
    hires = window.parameters.hires
    scroll = next(area for area in window.findChildren(QScrollArea) if area.isAncestorOf(hires))
    scroll.ensureWidgetVisible(hires.denoise)
    QApplication.processEvents()
    for widget in (hires.enabled, hires.upscaler, hires.denoise):
        widget.ensurePolished()
        assert widget.isVisible() and widget.width() >= widget.minimumSizeHint().width()
        assert widget.visibleRegion().boundingRect() == widget.rect()  # scrolled into view, unclipped
    folder = os.environ.get("APP_SCREENSHOTS")
    if folder:
        window.grab().save(str(Path(folder) / f"hires-{width}x{height}.png"))
