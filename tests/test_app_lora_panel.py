"""The LoRA and embeddings panel: lists the library's files with family, trigger words and preview (read on a
worker), filters, adds tags to the prompt, edits their weight with a slider, greys what does not fit the model;
and a dropped PNG names the LoRAs it uses that the library lacks."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from app.lora_info import ResourceInfo, missing_resources, read_info, trigger_words
from app.lora_panel import LoraPanel, ResourceListModel, install_lora_panel
from app.main_window import MainWindow
from app.settings import AppSettings
from app.drop_handler import classify_file
from app.prompt_loras import add_lora, add_word, prompt_loras, remove_lora, set_lora_weight
from app_support import QT_MARKS, fake_model_folder, open_window
from mlx_sd.image_metadata import save_image
from mlx_sd.infotext import parse_infotext
from mlx_sd.library import Library, LibraryItem
from test_app_drop_library import write_embedding, write_lora

pytestmark = QT_MARKS


@pytest.fixture
def library(tmp_path: Path) -> Path:
    root = tmp_path / "library"
    (root / "loras").mkdir(parents=True)
    (root / "embeddings").mkdir()
    write_lora(root / "loras" / "watercolor.safetensors")  # SD1 (context 768), trigger tags in its metadata
    write_lora(root / "loras" / "xl-detail.safetensors", context=2048)
    (root / "loras" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    Image.new("RGB", (96, 64), (200, 30, 30)).save(root / "loras" / "watercolor.preview.png")
    write_embedding(root / "embeddings" / "EasyNegative.safetensors")
    fake_model_folder(root / "models" / "sd15")
    return root


@pytest.fixture
def window(qtbot, library: Path) -> MainWindow:
    return open_window(qtbot, library)


def _panel(qtbot, window: MainWindow) -> LoraPanel:
    panel = install_lora_panel(window)
    window.tabs.setCurrentWidget(panel)
    panel.wait()
    qtbot.waitUntil(lambda: all(panel.model.info(r).loaded for r in range(panel.model.rowCount())))
    return panel


def _row(panel: LoraPanel, name: str):
    for row in range(panel.proxy.rowCount()):
        index = panel.proxy.index(row, 0)
        if index.data(ResourceListModel.InfoRole).name == name:
            return index
    raise LookupError(name)


def _shown(panel: LoraPanel) -> list[str]:
    return [panel.proxy.index(r, 0).data(ResourceListModel.InfoRole).name for r in range(panel.proxy.rowCount())]


def test_the_panel_lists_family_triggers_preview_and_problems(qtbot, window: MainWindow) -> None:
    panel = _panel(qtbot, window)
    assert _shown(panel) == ["broken", "watercolor", "xl-detail", "EasyNegative"]
    assert _row(panel, "watercolor").data() == "watercolor\nLoRA · SD 1.x · ink sketch, watercolor, paper"
    assert _row(panel, "xl-detail").data().startswith("xl-detail\nLoRA · SDXL")
    assert _row(panel, "EasyNegative").data() == "EasyNegative\nembedding · SD 1.x · 2 vectors of width 768"
    preview = _row(panel, "watercolor").data(Qt.ItemDataRole.DecorationRole).pixmap(48, 48).toImage()
    assert preview.pixelColor(24, 24).red() == 200  # the preview beside the file, not the blank of the others
    assert _row(panel, "xl-detail").data(Qt.ItemDataRole.DecorationRole).pixmap(48, 48).toImage().pixelColor(24, 24).alpha() == 0
    broken = _row(panel, "broken").data()
    assert broken.startswith("broken\n⚠ broken.safetensors") and broken.count("\n") == 1


def test_search_and_kind_filter(qtbot, window: MainWindow) -> None:
    panel = _panel(qtbot, window)
    panel.search.setText("INK")  # a trigger word (both LoRAs have it), any case
    assert _shown(panel) == ["watercolor", "xl-detail"]
    panel.search.setText("detail")
    assert _shown(panel) == ["xl-detail"]
    panel.search.setText("")
    panel.kind_combo.setCurrentText("Embeddings")
    assert _shown(panel) == ["EasyNegative"]


def test_click_adds_the_tag_and_the_slider_edits_its_weight(qtbot, window: MainWindow) -> None:
    panel = _panel(qtbot, window)
    window.prompt_panel.prompt_edit.setPlainText("a lighthouse at dusk")
    rect = panel.list.visualRect(_row(panel, "watercolor"))
    qtbot.mouseClick(panel.list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert window.prompt_panel.prompt() == "a lighthouse at dusk, <lora:watercolor:1>"
    chip = panel.chips()["watercolor"]
    chip.slider.setValue(15)  # 15 steps of 0.05
    assert window.prompt_panel.prompt() == "a lighthouse at dusk, <lora:watercolor:0.75>"
    assert chip.value.text() == "0.75"
    window.prompt_panel.prompt_edit.undo()  # each edit is one undo step
    assert window.prompt_panel.prompt() == "a lighthouse at dusk, <lora:watercolor:1>" and chip.slider.value() == 20
    window.prompt_panel.prompt_edit.setPlainText("a lighthouse at dusk, <lora:watercolor:0.75>")  # typed by hand
    assert panel.chips()["watercolor"] is chip and chip.slider.value() == 15
    panel.list.clicked.emit(_row(panel, "EasyNegative"))
    assert window.prompt_panel.prompt().endswith("<lora:watercolor:0.75>, EasyNegative")
    chip.remove.click()
    assert window.prompt_panel.prompt() == "a lighthouse at dusk, EasyNegative" and panel.chips() == {}
    window.prompt_panel.negative_edit.setPlainText("lowres")
    panel.add_to(window.prompt_panel.negative_edit, _row(panel, "EasyNegative"))  # the context menu's second entry
    assert window.prompt_panel.negative_prompt() == "lowres, EasyNegative"


def test_loras_of_another_family_are_greyed_with_the_reason(qtbot, window: MainWindow) -> None:
    panel = _panel(qtbot, window)
    assert window.picker.current().family == "sd1"
    xl = _row(panel, "xl-detail")
    assert not xl.flags() & Qt.ItemFlag.ItemIsEnabled
    assert xl.data(Qt.ItemDataRole.ToolTipRole) == "This LoRA is for SDXL; the model is SD 1.x"
    panel.list.clicked.emit(xl)
    assert "<lora:xl-detail" not in window.prompt_panel.prompt()
    assert _row(panel, "watercolor").flags() & Qt.ItemFlag.ItemIsEnabled
    panel.set_family("sdxl")
    assert _row(panel, "xl-detail").flags() & Qt.ItemFlag.ItemIsEnabled
    assert _row(panel, "EasyNegative").data(Qt.ItemDataRole.ToolTipRole) == "This embedding is for SD 1.x; the model is SDXL"


def test_a_missing_lora_chip_is_marked(qtbot, window: MainWindow) -> None:
    panel = _panel(qtbot, window)
    window.prompt_panel.prompt_edit.setPlainText("<lora:gone:0.5> a cat")
    assert panel.chips()["gone"].label.text() == "⚠ gone"


def test_a_dropped_png_names_the_missing_loras(qtbot, window: MainWindow, tmp_path: Path) -> None:
    install_lora_panel(window)
    infotext = (
        "a cat <lora:watercolor:0.8> <lora:pixel-art:1>\nNegative prompt: EasyNegative, lowres\n"
        'Steps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, '
        'Lora hashes: "watercolor: 0123456789ab, pixel-art: 00aa00aa00aa, Old Style: 111111111111", '
        'TI hashes: "EasyNegative: c74b4e810b03, badhands: 222222222222"'
    )
    path = save_image(Image.new("RGB", (64, 64)), tmp_path / "a1111.png", infotext)
    window.handle_drop(classify_file(path))
    window.message_bar.trigger("Restore Parameters")
    assert window.prompt_panel.prompt() == "a cat <lora:watercolor:0.8> <lora:pixel-art:1>"  # tags kept
    text = window.message_bar.text()
    assert "The LoRAs are not in the library: pixel-art, Old Style;" in text
    assert "the embedding is not in the library: badhands" in text


def test_prompt_editing_rules() -> None:
    assert add_lora("a cat,", "x", 0.5) == "a cat, <lora:x:0.5>"
    assert add_lora("a <lora:x:0.2>", "x") == "a <lora:x:0.2>"  # there already
    assert add_word("EasyNegativeV2", "EasyNegative") == "EasyNegativeV2, EasyNegative"  # whole words only
    assert set_lora_weight("<lora:x:1:0.5> and <lora:y> <lora:x>", "x", -0.25) == "<lora:x:-0.25> and <lora:y> <lora:x:-0.25>"
    assert remove_lora("<lora:x:1>, a cat, <lora:y:1>", "x") == "a cat, <lora:y:1>"
    assert remove_lora("a cat, <lora:y:1>", "y") == "a cat"
    assert [t.name for t in prompt_loras("<lora:a> <lora:bad:x> <lora:a:2> <lora:b>")] == ["a", "b"]


def test_trigger_words() -> None:
    metadata = {"modelspec.trigger_phrase": "wtrclr style, soft", "ss_tag_frequency": '{"a": {"x": 3, "soft": 9}, "b": {"x": 8}}'}
    assert trigger_words(metadata) == ("wtrclr style", "soft", "x")
    assert trigger_words({"ss_tag_frequency": "not json"}) == ()


def test_prompt_editing_is_linear_in_the_prompt() -> None:
    import time

    def seconds(n: int) -> float:
        prompt = ", ".join(f"<lora:x:{i % 3}> word" for i in range(n))
        started = time.perf_counter()
        set_lora_weight(prompt, "x", 0.5)
        remove_lora(prompt, "x")
        return time.perf_counter() - started

    seconds(500)
    assert seconds(16_000) < 8 * 4 * seconds(4_000) + 0.05  # 4x the text: about 4x the time, not 16x


def test_unsuitable_reason_needs_both_families() -> None:
    info = ResourceInfo("loras", "x", Path("x.safetensors"), frozenset({"sd1", "sd2"}))
    assert info.unsuitable_for(None) == "" and info.unsuitable_for("sd2") == ""
    assert info.unsuitable_for("sdxl") == "This LoRA is for SD 1.x or SD 2.x; the model is SDXL"
    assert missing_resources(parse_infotext("a <lora:x:1>\nSteps: 1, Seed: 1, Size: 8x8"), Library(Path("/nonexistent"))) == [
        "the LoRA is not in the library: x"
    ]


def test_an_embedding_bundled_in_a_lora_is_not_looked_for_in_the_library(tmp_path: Path) -> None:
    # A1111 writes a bundled embedding's LoRA in place of its hash: only the LoRA must be in the library
    text = 'a mytoken, other <lora:pivot:1>\nSteps: 1, Seed: 1, Size: 8x8, TI hashes: "mytoken: pivot, other: 0123456789ab"'
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "pivot.safetensors").write_bytes(b"")
    assert missing_resources(parse_infotext(text), Library(tmp_path)) == ["the embedding is not in the library: other"]


def test_a_lora_of_bundled_embeddings_names_them_and_their_family(tmp_path: Path) -> None:
    path = tmp_path / "negatives.safetensors"
    mx.save_safetensors(str(path), {"bundle_emb.EasyNegative.emb_params": mx.zeros((2, 768))})
    info = read_info(LibraryItem("loras", "negatives", path))
    assert info.families == {"sd1"} and ResourceListModel.detail(info) == "LoRA · SD 1.x · bundles EasyNegative"


def test_files_are_read_off_the_ui_thread_and_once_per_version(qtbot, window: MainWindow, library: Path, monkeypatch) -> None:
    import threading
    import time

    import app.lora_panel as lora_panel

    threads: list[str] = []
    real = lora_panel.read_info

    def slow_read(item, allow_pickle=False):
        threads.append(threading.current_thread().name)
        time.sleep(0.3)
        return real(item, allow_pickle)

    monkeypatch.setattr(lora_panel, "read_info", slow_read)
    started = time.perf_counter()
    panel = install_lora_panel(window)
    assert time.perf_counter() - started < 0.3  # four files of 0.3 s each: none read on this thread
    assert "reading…" in _row(panel, "watercolor").data()
    panel.wait()
    qtbot.waitUntil(lambda: all(panel.model.info(r).loaded for r in range(panel.model.rowCount())))
    assert len(threads) == 4 and threading.main_thread().name not in threads
    panel.refresh()
    panel.wait()
    assert len(threads) == 4  # cached by path, modification time and size
    lora = library / "loras" / "watercolor.safetensors"
    write_lora(lora, context=1024)  # changed on disk: read again
    panel.refresh()
    panel.wait()
    qtbot.waitUntil(lambda: "SD 2.x" in _row(panel, "watercolor").data())
    assert len(threads) == 5


def test_the_model_finds_loras_in_the_apps_library_and_notices_show(qtbot, library: Path, tmp_path: Path) -> None:
    from app_support import ScriptedPipeline

    from mlx_sd.request import GenerationResult

    class NoticingPipeline(ScriptedPipeline):
        def generate(self, request, on_progress=None, cancel=None) -> GenerationResult:
            result = super().generate(request, on_progress, cancel)
            return GenerationResult(result.images, result.seeds, result.infotexts, notices=["two LoRAs named x: using a, not b"])

    pipeline = NoticingPipeline()
    window = open_window(qtbot, library, pipeline)
    window.parameters.set_values({"steps": 1, "width": 64, "height": 64})
    with qtbot.waitSignal(window.controller.finished, timeout=20_000):
        window.generate()
    assert pipeline.library.root == library  # not the default library folder
    assert window.statusBar().currentMessage() == "two LoRAs named x: using a, not b"
    other = tmp_path / "moved"
    window.set_library(other)
    qtbot.waitUntil(lambda: pipeline.library.root == other)


def test_a_pickle_lora_is_read_only_when_the_setting_allows_it(qtbot, window: MainWindow, library: Path) -> None:
    import dataclasses

    import torch

    from test_app_drop_library import LORA_KEY

    torch.save({f"{LORA_KEY}.lora_down.weight": torch.zeros(4, 768), f"{LORA_KEY}.lora_up.weight": torch.zeros(320, 4)},
               library / "loras" / "pickled.pt")
    panel = _panel(qtbot, window)
    row = _row(panel, "pickled")
    reason = "a pickle file: enable 'Allow pickle files' in Settings to use it"
    assert row.data() == f"pickled\nLoRA · {reason}"
    assert row.data(Qt.ItemDataRole.ToolTipRole) == reason and row.data(Qt.ItemDataRole.ForegroundRole) is not None
    assert not row.flags() & Qt.ItemFlag.ItemIsEnabled  # greyed: a click adds nothing
    window.apply_settings(dataclasses.replace(window.settings, allow_pickle=True))
    panel.wait()
    qtbot.waitUntil(lambda: _row(panel, "pickled").data() == "pickled\nLoRA · SD 1.x")
    assert _row(panel, "pickled").flags() & Qt.ItemFlag.ItemIsEnabled
    window.apply_settings(dataclasses.replace(window.settings, allow_pickle=False))  # answered from the cache
    assert _row(panel, "pickled").data() == f"pickled\nLoRA · {reason}"


def test_generation_reads_pickles_as_the_setting_says(qtbot, library: Path) -> None:
    import dataclasses

    from app_support import ScriptedPipeline

    pipeline = ScriptedPipeline()
    window = open_window(qtbot, library, pipeline, settings=AppSettings(allow_pickle=True))
    window.parameters.set_values({"steps": 1, "width": 64, "height": 64})
    for allowed in (True, False):
        window.apply_settings(dataclasses.replace(window.settings, allow_pickle=allowed))
        with qtbot.waitSignal(window.controller.finished, timeout=20_000):
            window.generate()
        assert pipeline.allow_pickle is allowed


def test_a_refused_pickle_says_which_setting_allows_it(qtbot, library: Path, tmp_path: Path) -> None:
    import mlx.core as mx
    import torch

    from app.generation_worker import describe_error
    from app_support import ScriptedPipeline
    from convert.vae_file import read_vae
    from mlx_sd.lora import LoraError, read_lora
    from model_folders import CONFIGS

    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, tmp_path / "style.pt")
    (tmp_path / "vae.ckpt").write_bytes(b"PK\x03\x04")
    with pytest.raises(LoraError) as lora:
        read_lora(tmp_path / "style.pt")
    with pytest.raises(ValueError) as vae:
        read_vae(tmp_path / "vae.ckpt", CONFIGS["sd1"], mx.float32)
    for refusal, name in ((lora.value, "style.pt"), (vae.value, "vae.ckpt")):
        message = describe_error(refusal)  # the CLI's words name --allow-pickle; the app's, its setting
        assert message.title == "Pickle files are not allowed" and message.detail.startswith(f"{name} is a pickle file")
        assert "'Allow pickle files' in Settings" in message.detail and "--allow-pickle" not in message.detail
    window = open_window(qtbot, library, ScriptedPipeline(fail=lora.value))
    window.parameters.set_values({"steps": 1, "width": 64, "height": 64})
    with qtbot.waitSignal(window.controller.failed, timeout=20_000):
        window.generate()
    assert window.message_bar.kind == "error" and "'Allow pickle files' in Settings" in window.message_bar.text()


def test_a_missing_lora_in_the_prompt_fails_in_one_line_with_a_real_model(qtbot, tmp_path: Path) -> None:
    from app.generation_worker import load_pipeline
    from app_support import write_tiny_model

    root = tmp_path / "library"
    write_tiny_model(root / "models" / "tiny")
    window = open_window(qtbot, root, loader=load_pipeline)
    window.prompt_panel.prompt_edit.setPlainText("a cube <lora:nowhere:0.7>")
    window.parameters.set_values({"steps": 1, "width": 64, "height": 64})
    with qtbot.waitSignal(window.controller.failed, timeout=60_000):
        window.generate()
    text = window.message_bar.text()
    assert window.message_bar.kind == "error" and "no LoRA named 'nowhere'" in text, text
