"""The per-model VAE choice: Automatic plus the library's VAEs, remembered per model in the settings, sent as
GenerationRequest.vae, selected by a restored PNG's `VAE:`, and refreshed when a VAE is dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from app.drop_handler import classify_file
from app.settings import AppSettings, load_settings
from app.vae_choice import install_vae_choice
from app_support import QT_MARKS, fake_model_folder, open_window
from mlx_sd.image_metadata import save_image
from test_app_drop_library import write_vae

pytestmark = QT_MARKS


@pytest.fixture
def library(tmp_path: Path) -> Path:
    root = tmp_path / "library"
    fake_model_folder(root / "models" / "alpha")
    fake_model_folder(root / "models" / "beta")
    (root / "vae").mkdir()
    write_vae(root / "vae" / "ft-mse.safetensors")
    return root


def test_the_choice_is_remembered_per_model_and_sent(qtbot, library: Path, tmp_path: Path) -> None:
    settings_path = tmp_path / "settings.json"
    window = open_window(qtbot, library, settings=AppSettings(), settings_path=settings_path)
    choice = install_vae_choice(window)
    assert [choice.itemText(i) for i in range(choice.count())] == ["Automatic", "ft-mse"]
    assert window.picker.current().name == "alpha" and window.build_request().vae is None
    choice.setCurrentIndex(1)
    choice.activated.emit(1)  # the user's pick
    assert window.build_request().vae == "ft-mse"
    assert load_settings(settings_path).model_vaes == {"alpha": "ft-mse"}
    window.picker.select("beta")
    assert choice.currentText() == "Automatic" and window.build_request().vae is None
    window.picker.select("alpha")
    assert choice.currentText() == "ft-mse"


def test_a_restored_vae_is_selected_or_named_missing(qtbot, library: Path, tmp_path: Path) -> None:
    window = open_window(qtbot, library)
    choice = install_vae_choice(window)
    base = "a castle\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, VAE: "
    for vae, expected in (("ft-mse.safetensors", "ft-mse"), ("sdxl_vae.safetensors", "ft-mse")):
        path = save_image(Image.new("RGB", (64, 64)), tmp_path / f"{vae}.png", base + vae)
        window.handle_drop(classify_file(path))
        window.message_bar.trigger("Restore Parameters")
        assert choice.currentText() == expected, window.message_bar.text()
    assert "The VAE sdxl_vae is not in the library, kept ft-mse." in window.message_bar.text()
    assert window.settings.model_vaes == {}  # a restore is not the model's default


def test_a_dropped_vae_is_listed(qtbot, library: Path, tmp_path: Path) -> None:
    window = open_window(qtbot, library)
    choice = install_vae_choice(window)
    dropped = write_vae(tmp_path / "kl-f8-anime.safetensors")
    with qtbot.waitSignal(window.resourcesChanged, timeout=10_000):
        window.handle_drop(classify_file(dropped))
    assert choice.names() == ["ft-mse", "kl-f8-anime"]
