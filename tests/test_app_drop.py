"""Drag and drop anywhere on the window, and paste: images become the img2img source, images with
parameters (ours or A1111's) offer to restore them, checkpoints go to the import, the rest is explained."""

import dataclasses
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path


import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication
from PySide6.QtTest import QSignalSpy
from PySide6.QtWidgets import QApplication, QWidget

from app import drop_handler
from app.drop_handler import DropKind, accepts, classify_file, classify_source, source_of
from app.main_window import MainWindow
from app.result_view import pil_to_qimage
from app_support import QT_MARKS, fake_model_folder, noise_image, open_window
from mlx_sd.image_metadata import save_image
from mlx_sd.infotext import format_infotext
from mlx_sd.request import GenerationRequest

pytestmark = QT_MARKS

A1111_INFOTEXT = (
    "a castle on a hill, (dramatic sky:1.2)\n"
    "Negative prompt: lowres, blurry\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 3141592653, Size: 640x448, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Version: v1.10.1'
)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    image = noise_image(1, 96, 64)
    request = GenerationRequest(prompt="a red cube", negative_prompt="text", steps=9, seed=77, width=64, height=96,
                                sampler="Euler a", cfg_scale=5.5)
    found = {
        "ours": save_image(image, tmp_path / "ours.png", format_infotext(request, 77)),
        "a1111": save_image(image, tmp_path / "a1111.png", A1111_INFOTEXT),
        "jpeg": save_image(image, tmp_path / "params.jpg", A1111_INFOTEXT),
        "plain": save_image(image, tmp_path / "plain.png"),
        "checkpoint": tmp_path / "model.safetensors",
        "pickle": tmp_path / "model.ckpt",
        "text": tmp_path / "notes.txt",
        "damaged": tmp_path / "damaged.png",
        "folder": tmp_path / "some folder",
        "diffusers": tmp_path / "diffusers-model",
    }
    found["checkpoint"].write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    found["pickle"].write_bytes(b"PK\x03\x04")
    found["text"].write_text("hello", encoding="utf-8")
    found["damaged"].write_bytes(found["plain"].read_bytes()[:60])
    found["folder"].mkdir()
    found["diffusers"].mkdir()
    (found["diffusers"] / "model_index.json").write_text("{}", encoding="utf-8")
    return found


# -- classifying ----------------------------------------------------------------------------------


def test_classify_files(files: dict[str, Path], tmp_path: Path) -> None:
    ours = classify_file(files["ours"])
    assert ours.kind is DropKind.PARAMETERS and "Seed: 77" in ours.infotext and ours.image.size == (96, 64)
    assert ours.parameters.params["Seed"] == "77"  # parsed where the file is read: on the worker in the app
    assert classify_file(files["a1111"]).kind is DropKind.PARAMETERS
    assert classify_file(files["jpeg"]).infotext == A1111_INFOTEXT  # EXIF UserComment
    plain = classify_file(files["plain"])
    assert plain.kind is DropKind.IMAGE and plain.infotext is None
    assert classify_file(files["checkpoint"]).kind is DropKind.CHECKPOINT
    assert classify_file(files["diffusers"]).kind is DropKind.CHECKPOINT
    assert "pickle checkpoint" in classify_file(files["pickle"], allow_pickle=True).message  # unreadable: not imported
    expected = {
        "pickle": "model.ckpt is a pickle file, which can run code when it is opened. If you trust it, enable 'Allow pickle files'",
        "text": "notes.txt is not an image or a checkpoint",
        "damaged": "damaged.png could not be read as an image",
        "folder": "some folder is a folder",
    }
    for key, text in expected.items():
        item = classify_file(files[key])
        assert item.kind is DropKind.UNSUPPORTED and text in item.message, key
    missing = classify_file(tmp_path / "gone.png")
    assert missing.kind is DropKind.UNSUPPORTED and "does not exist" in missing.message


def classify_mime(mime: QMimeData):
    """What the drop filter's worker makes of `mime`, on this thread."""
    return classify_source(source_of(mime))


def test_classify_mime() -> None:
    mime = QMimeData()
    mime.setImageData(pil_to_qimage(noise_image(2, 20, 10)))
    item = classify_mime(mime)
    assert item.kind is DropKind.IMAGE and item.image.size == (20, 10)
    web = QMimeData()
    web.setUrls([QUrl("https://example.com/cat.png")])
    assert "not a file on this computer" in classify_mime(web).message
    text = QMimeData()
    text.setText("just words")
    assert not accepts(text)  # left to the text boxes
    assert classify_mime(text).kind is DropKind.UNSUPPORTED


# -- on the window --------------------------------------------------------------------------------


@pytest.fixture
def window(qtbot, tmp_path: Path) -> MainWindow:
    library = tmp_path / "library"
    fake_model_folder(library / "models" / "tiny", native=512)
    fake_model_folder(library / "models" / "v1-5-pruned-emaonly", native=512)
    win = open_window(qtbot, library)
    win.picker.select("tiny")
    return win


def read_by_worker(window: MainWindow, action: Callable[[], object]) -> object:
    """Run `action` (a drop, a paste) and wait for the worker's result to reach the window."""
    spy = QSignalSpy(window.drop_filter.dropped)
    result = action()
    wait_for(spy)
    return result


def wait_for(spy: QSignalSpy, seconds: float = 10) -> None:
    """Run the event loop until `spy` has seen its signal (QSignalSpy.wait holds the GIL, which the
    worker needs)."""
    deadline = time.monotonic() + seconds
    while not spy.count():
        assert time.monotonic() < deadline, "the dropped item never arrived"
        QApplication.processEvents()
        time.sleep(0.002)


def drop(target: QWidget, mime: QMimeData) -> bool:
    """Drag `mime` onto `target` and drop it, as Qt delivers a real drag; returns whether it was taken
    (and then once the window has the worker's reading of it)."""
    point = QPointF(target.width() / 2, target.height() / 2)
    actions = Qt.DropAction.CopyAction
    buttons, modifiers = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    enter = QDragEnterEvent(point, actions, mime, buttons, modifiers)
    QApplication.sendEvent(target, enter)
    if not enter.isAccepted():
        return False
    event = QDropEvent(point, actions, mime, buttons, modifiers)
    read_by_worker(target.window(), lambda: QApplication.sendEvent(target, event))
    return event.isAccepted()


def file_mime(*paths: Path) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    return mime


def targets(window: MainWindow) -> list[QWidget]:
    """Places across the window: the result area, the prompt box, a line edit, the parameters."""
    return [
        window.result_view.canvas,
        window.prompt_panel.prompt_edit.viewport(),
        window.prompt_panel.prefix_edit,
        window.parameters.steps,
    ]


def test_dropped_image_becomes_the_source_anywhere(window: MainWindow, files: dict[str, Path]) -> None:
    box = window.parameters.init_image
    for target in targets(window):
        box.clear()
        assert drop(target, file_mime(files["plain"])), target
        assert box.image() is not None and box.image().size == (96, 64), target
    assert box.strength.isEnabled() and box.clear_button.isEnabled()
    assert (window.parameters.values()["width"], window.parameters.values()["height"]) == (576, 384)  # 3:2
    box.strength.setValue(40)
    request = window.build_request()
    assert request.init_image is box.image() and request.strength == 0.4
    box.clear_button.click()
    assert box.image() is None and window.build_request().init_image is None
    assert window.prompt_panel.prompt() == "" and window.prompt_panel.prefix() == ""  # no path was typed


def test_dropped_png_with_our_parameters_restores_them(window: MainWindow, files: dict[str, Path]) -> None:
    window.prompt_panel.set_affixes("masterpiece", "")
    assert drop(window.result_view.canvas, file_mime(files["ours"]))
    bar = window.message_bar
    assert bar.isVisible() and "ours.png carries generation parameters" in bar.text()
    assert bar.action_labels() == ["Restore Parameters", "Use as Source Image"]
    bar.trigger("Restore Parameters")
    values = window.parameters.values()
    assert window.prompt_panel.prompt() == "a red cube" and window.prompt_panel.negative_prompt() == "text"
    assert (values["steps"], values["seed"], values["sampler"], values["cfg_scale"]) == (9, 77, "Euler a", 5.5)
    assert (values["width"], values["height"]) == (64, 96)
    assert window.parameters.init_image.image() is None
    assert "Parameters restored from ours.png" in bar.text()
    request = window.build_request()
    assert request.prompt == "masterpiece, a red cube"


def test_restore_hooks_get_the_request_and_the_infotext_it_came_from(window: MainWindow, files: dict[str, Path]) -> None:
    seen = []
    window.restore_hooks.append(lambda request, info: seen.append((request.seed, info)) or ["a hook's note"])
    assert drop(window.result_view.canvas, file_mime(files["ours"]))
    window.message_bar.trigger("Restore Parameters")
    [(seed, info)] = seen
    assert seed == 77 and info.params["Seed"] == "77"
    assert "A hook's note." in window.message_bar.text()
    assert window.reuse_request(dataclasses.replace(window.build_request(), seed=5)) == ["a hook's note"]
    assert seen[1] == (5, None)  # a history entry's request: no infotext


def test_dropped_a1111_png_restores_and_selects_its_model(window: MainWindow, files: dict[str, Path]) -> None:
    assert drop(window.prompt_panel.prompt_edit.viewport(), file_mime(files["a1111"]))
    window.message_bar.trigger("Restore Parameters")
    values = window.parameters.values()
    assert window.prompt_panel.prompt() == "a castle on a hill, (dramatic sky:1.2)"
    assert window.prompt_panel.negative_prompt() == "lowres, blurry"
    assert (values["sampler"], values["schedule"], values["steps"]) == ("DPM++ 2M", "Karras", 28)
    assert (values["seed"], values["cfg_scale"], values["clip_skip"]) == (3141592653, 6.5, 2)
    assert (values["width"], values["height"]) == (640, 448)
    assert window.picker.current().name == "v1-5-pruned-emaonly"


def test_unknown_sampler_and_model_are_noted(window: MainWindow, tmp_path: Path) -> None:
    text = "a dog\nSteps: 5, Sampler: DPM++ 4M, Seed: 1, Size: 64x64, Model: sd_xl_base_1.0"
    path = save_image(noise_image(3, 64, 64), tmp_path / "unknown_sampler.png", text)
    assert drop(window.result_view.canvas, file_mime(path))
    window.message_bar.trigger("Restore Parameters")
    assert "sampler 'DPM++ 4M' is not available" in window.message_bar.text()
    assert "sd_xl_base_1.0" in window.message_bar.text() and "not installed" in window.message_bar.text()
    assert window.picker.current().name == "tiny" and window.parameters.values()["steps"] == 5


def test_dropped_png_with_parameters_can_be_the_source(window: MainWindow, files: dict[str, Path]) -> None:
    assert drop(window.result_view.canvas, file_mime(files["jpeg"]))
    window.message_bar.trigger("Use as Source Image")
    assert window.parameters.init_image.image().size == (96, 64)
    assert window.prompt_panel.prompt() == ""


def test_dropped_checkpoint_goes_to_the_import(window: MainWindow, files: dict[str, Path]) -> None:
    assert drop(window.result_view.canvas, file_mime(files["checkpoint"]))
    assert "mlx-sd convert" in window.message_bar.text()  # no importer plugged in: how to do it by hand
    imported: list[Path] = []
    window.set_checkpoint_importer(imported.append)
    assert drop(window.parameters.steps, file_mime(files["checkpoint"]))
    assert drop(window.result_view.canvas, file_mime(files["diffusers"]))
    assert imported == [files["checkpoint"], files["diffusers"]]


@pytest.mark.parametrize("key", ["pickle", "text", "damaged", "folder"])
def test_other_drops_are_explained(window: MainWindow, files: dict[str, Path], key: str) -> None:
    assert drop(window.result_view.canvas, file_mime(files[key]))
    assert window.message_bar.kind == "error" and "This cannot be used here" in window.message_bar.text()
    assert files[key].name in window.message_bar.text()
    assert window.parameters.init_image.image() is None


def test_several_files_use_the_first(window: MainWindow, files: dict[str, Path]) -> None:
    assert drop(window.result_view.canvas, file_mime(files["plain"], files["ours"]))
    assert window.parameters.init_image.image() is not None
    assert "drop one file at a time" in window.statusBar().currentMessage()


def test_text_drags_stay_with_the_text_boxes(window: MainWindow) -> None:
    mime = QMimeData()
    mime.setText("a lighthouse")
    assert not drop(window.result_view.canvas, mime)
    assert window.parameters.init_image.image() is None and not window.message_bar.isVisible()


# -- paste ------------------------------------------------------------------------------------


def test_paste_image_from_the_clipboard(qtbot, window: MainWindow) -> None:
    QGuiApplication.clipboard().setImage(pil_to_qimage(noise_image(4, 64, 128)))
    read_by_worker(window, window.paste_from_clipboard)
    assert window.parameters.init_image.image().size == (64, 128)
    window.parameters.init_image.clear()
    read_by_worker(window, window.parameters.init_image.paste_button.click)
    assert window.parameters.init_image.image().size == (64, 128)


def test_ctrl_v_in_the_prompt_box_pastes_an_image_as_source(qtbot, window: MainWindow) -> None:
    QGuiApplication.clipboard().setImage(pil_to_qimage(noise_image(5, 80, 80)))
    window.activateWindow()
    window.prompt_panel.prompt_edit.setFocus()
    qtbot.keyClick(window.prompt_panel.prompt_edit, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert window.parameters.init_image.image().size == (80, 80)  # image data, no file: read at once
    assert window.prompt_panel.prompt() == ""
    QGuiApplication.clipboard().setText("a cat")  # text still pastes as text
    qtbot.keyClick(window.prompt_panel.prompt_edit, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert window.prompt_panel.prompt() == "a cat"


def test_paste_a_copied_file_and_nothing_usable(window: MainWindow, files: dict[str, Path]) -> None:
    QGuiApplication.clipboard().setMimeData(file_mime(files["a1111"]))
    read_by_worker(window, window.paste_from_clipboard)
    assert window.message_bar.action_labels() == ["Restore Parameters", "Use as Source Image"]
    QGuiApplication.clipboard().setText("words")
    window.paste_from_clipboard()
    assert "There is no image on the clipboard" in window.message_bar.text()


def test_source_image_from_a_history_file(window: MainWindow, files: dict[str, Path]) -> None:
    window.use_image_file_as_source(str(files["ours"]))
    assert window.parameters.init_image.image().size == (96, 64)
    window.use_image_file_as_source(files["text"])
    assert "cannot be used as a source" in window.message_bar.text()


def test_thumbnail_is_shown(window: MainWindow) -> None:
    window.set_init_image(Image.new("RGB", (300, 150), (200, 10, 10)))
    pixmap = window.parameters.init_image.thumbnail.pixmap()
    assert not pixmap.isNull() and pixmap.width() == 120 and pixmap.height() == 60


# -- off the UI thread ------------------------------------------------------------------------


def test_a_slow_file_is_read_on_a_worker_while_the_window_stays_responsive(
    qtbot, window: MainWindow, files: dict[str, Path], monkeypatch
) -> None:
    release = threading.Event()
    readers: list[threading.Thread] = []
    classify = drop_handler.classify_file

    def slow(path: Path, allow_pickle: bool = False):
        readers.append(threading.current_thread())
        release.wait(10)
        return classify(path, allow_pickle)

    monkeypatch.setattr(drop_handler, "classify_file", slow)
    spy = QSignalSpy(window.drop_filter.dropped)
    started = time.perf_counter()
    window.drop_filter.classify(file_mime(files["plain"]))
    assert time.perf_counter() - started < 0.5  # handed over at once (read here, it would block 10 s)
    qtbot.waitUntil(lambda: bool(readers))  # the event loop runs while the file is being read
    assert readers[0] is not threading.main_thread()
    assert spy.count() == 0 and window.parameters.init_image.image() is None
    release.set()
    wait_for(spy)
    assert window.parameters.init_image.image().size == (96, 64)


def png_with_compressed_parameters(path: Path, text: str) -> Path:
    """A small PNG whose zTXt `parameters` chunk decompresses to `text`."""
    image = Image.new("RGB", (8, 8))
    image.save(path)
    data = path.read_bytes()
    body = b"parameters\x00\x00" + zlib.compress(text.encode("latin-1"), 9)
    chunk = len(body).to_bytes(4, "big") + b"zTXt" + body + zlib.crc32(b"zTXt" + body).to_bytes(4, "big")
    path.write_bytes(data[:33] + chunk + data[33:])  # after the 8-byte signature and the 25-byte IHDR
    return path


def test_a_hostile_parameters_chunk_is_read_quickly_off_the_ui_thread(window: MainWindow, tmp_path: Path) -> None:
    path = png_with_compressed_parameters(tmp_path / "bomb.png", "a" * 1_000_000)  # one 1 MB line, no pairs
    assert path.stat().st_size < 5_000
    started = time.perf_counter()
    assert drop(window.result_view.canvas, file_mime(path))
    assert time.perf_counter() - started < 5  # the quadratic parse took about an hour
    assert "bomb.png carries generation parameters" in window.message_bar.text()
