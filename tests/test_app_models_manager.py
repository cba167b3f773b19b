"""The model manager offscreen: the model list (qtmodeltester), imports through the real converter from
a file and from a Hugging Face repo id (a local hub cache), cancel, failures, rename, delete, drops."""

import shutil
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QFileDialog, QInputDialog, QMessageBox

from mlx_sd.model_library import ModelLibrary
from app.model_import import ModelImporter, progress_label
from app.model_manager import ModelListModel, ModelManagerDialog, format_size
from convert import ConversionProgress, ConvertOptions, convert_model
from test_app_models_library import write_model_folder

pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    # the offscreen platform plugin says this for every top-level window with a layout
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints"),
]

HASH = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def library(tmp_path):
    demo = write_model_folder(tmp_path / "demo", "sd15", payload=10)
    return ModelLibrary(tmp_path / "library", demo_folder=demo)


@pytest.fixture(autouse=True)
def stop_imports(monkeypatch):
    """Whatever a test does, no import thread outlives it."""
    made = []
    original = ModelImporter.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(ModelImporter, "__init__", init)
    yield
    for importer in made:
        importer.shutdown()


def open_dialog(qtbot, library, importer=None, options=ConvertOptions(dtype="float32")):
    importer = importer or ModelImporter()
    dialog = ModelManagerDialog(library, importer, lambda: options)
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitExposed(dialog)
    return dialog, importer


def leftovers(library):
    return sorted(p.name for p in library.folder.iterdir() if p.name.startswith(".")) if library.folder.exists() else []


def test_model_list_model(qtmodeltester, library):
    write_model_folder(library.folder / "xl", "sdxl", "bfloat16", payload=2_500_000)
    (library.folder / "broken").mkdir(parents=True)
    model = ModelListModel(library)
    qtmodeltester.check(model)
    table = [[model.index(r, c).data() for c in range(model.columnCount())] for r in range(model.rowCount())]
    assert [model.headerData(c, Qt.Orientation.Horizontal) for c in range(5)] == list(ModelListModel.COLUMNS)
    assert table[0] == ["broken (damaged)", "\u2014", "\u2014", "\u2014", "0 bytes"]
    assert table[1][:4] == ["xl", "SDXL", "1024 \u00d7 1024", "bfloat16"] and table[1][4] == "2.5 MB"
    assert table[2][:4] == ["demo (bundled)", "SD 1.x", "512 \u00d7 512", "float16"]
    assert "no model.json" in model.index(0, 0).data(Qt.ItemDataRole.ToolTipRole)
    assert model.index(1, 0).data(ModelListModel.InfoRole).family == "sdxl"
    shutil.rmtree(library.folder / "broken")
    model.reload()
    qtmodeltester.check(model)
    assert model.rowCount() == 2 and model.row_of("xl") == 0


def test_sizes_and_labels():
    assert [format_size(n) for n in (0, 999, 1000, 23_456_789, 6_900_000_000)] == [
        "0 bytes", "999 bytes", "1.0 KB", "23.5 MB", "6.9 GB"]
    assert progress_label(ConversionProgress("read", 3, 980), "x") == "Converting weights: 3 of 980"
    assert progress_label(ConversionProgress("fetch", 0, 1), "a/b") == "Downloading a/b from Hugging Face\u2026"


def test_import_a_file_with_progress_then_selectable(qtbot, monkeypatch, tiny_models, library):
    checkpoint = tiny_models.single_file("sd1")
    dialog, importer = open_dialog(qtbot, library)
    assert dialog.empty_label.isVisible()
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(checkpoint), ""))
    seen = []
    importer.progressed.connect(
        lambda p: seen.append((p.stage, p.done, p.total, importer.progress_dialog.value(),
                               importer.progress_dialog.maximum(), importer.progress_dialog.labelText()))
    )
    with qtbot.waitSignal(importer.imported, timeout=120_000) as imported:
        dialog.import_file_button.click()
        assert importer.busy and importer.progress_dialog.isVisible()
    assert imported.args == ["sd1-single"]
    assert not importer.busy and importer.progress_dialog is None
    reads = [s for s in seen if s[0] == "read"]
    assert reads[-1][1] == reads[-1][2] > 100  # every tensor was reported...
    assert all(value == done and maximum == total for _, done, total, value, maximum, _ in reads)  # ...and shown
    assert reads[-1][5] == f"Converting weights: {reads[-1][2]} of {reads[-1][2]}"
    assert [s[0] for s in seen[-3:]] == ["write", "validate", "done"]
    info = library.get("sd1-single")
    assert (info.family, info.precision, info.native_size, info.source) == ("sd1", "float32", 512, "sd1-single.safetensors")
    assert dialog.selected().name == "sd1-single"  # selectable at once
    assert dialog.message.text() == "Imported sd1-single; it is ready to use."
    assert not dialog.empty_label.isVisible()
    assert leftovers(library) == []
    with qtbot.waitSignal(dialog.model_chosen) as chosen:
        dialog.use_button.click()
    assert chosen.args == ["sd1-single"]


def slow_converter(hold_at: int):
    """The real converter, holding at tensor `hold_at` until the import is cancelled (at most 30 s)."""
    def convert(source, output, options, on_progress, cancel):
        def progress(p):
            on_progress(p)
            if p.stage == "read" and p.done == hold_at:
                deadline = time.monotonic() + 30
                while not cancel() and time.monotonic() < deadline:
                    time.sleep(0.01)
        return convert_model(source, output, options, progress, cancel)
    return convert


def test_cancel_stops_the_import_and_leaves_nothing(qtbot, tiny_models, library):
    importer = ModelImporter(convert=slow_converter(hold_at=5))
    dialog, _ = open_dialog(qtbot, library, importer)
    dialog.import_source(tiny_models.single_file("sd1"))
    qtbot.waitUntil(lambda: importer.progress_dialog.value() >= 5, timeout=30_000)
    with qtbot.waitSignal(importer.cancelled, timeout=30_000):
        importer.progress_dialog.findChild(type(dialog.use_button)).click()  # the dialog's Cancel button
    assert not importer.busy
    assert dialog.message.text() == "Import cancelled; nothing was added."
    assert [m.name for m in library.models()] == ["demo"]
    assert leftovers(library) == []


def test_a_broken_file_fails_with_a_message(qtbot, tmp_path, library):
    bogus = tmp_path / "notes.safetensors"
    bogus.write_bytes(b"this is not a checkpoint at all")
    dialog, importer = open_dialog(qtbot, library)
    with qtbot.waitSignal(importer.failed, timeout=30_000) as failed:
        dialog.import_source(bogus)
    assert "notes.safetensors" in failed.args[0]
    assert dialog.message.text().startswith("The model could not be imported: ")
    assert [m.name for m in library.models()] == ["demo"] and leftovers(library) == []


def test_one_import_at_a_time(qtbot, tiny_models, library):
    importer = ModelImporter(convert=slow_converter(hold_at=1))
    failures = []
    importer.failed.connect(failures.append)
    assert importer.start(tiny_models.single_file("sd1"), library, ConvertOptions())
    assert not importer.start(tiny_models.single_file("sd1"), library, ConvertOptions())
    assert failures == ["sd1-single is still being imported; wait for it or cancel it first."]
    with qtbot.waitSignal(importer.cancelled, timeout=30_000):
        importer.cancel()


def test_import_from_a_hugging_face_repo_id(qtbot, monkeypatch, tmp_path, tiny_models, library):
    cache = tmp_path / "hub"
    repo = cache / "models--tiny-org--tiny-sd1"
    shutil.copytree(tiny_models.diffusers("sd1"), repo / "snapshots" / HASH)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HASH)
    dialog, importer = open_dialog(qtbot, library, options=ConvertOptions(hub_cache=cache))
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("not a repo id", True))
    dialog.import_repo_button.click()
    assert dialog.message.text().startswith("Expected a Hugging Face repo id such as ")
    assert not importer.busy
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: (" tiny-org/tiny-sd1 ", True))
    with qtbot.waitSignal(importer.imported, timeout=120_000) as imported:
        dialog.import_repo_button.click()
    assert imported.args == ["tiny-sd1"]
    info = library.get("tiny-sd1")
    assert (info.family, info.precision, info.source) == ("sd1", "float16", "tiny-org/tiny-sd1")
    # a repo that is not in the cache, with the hub unreachable: a readable failure
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("tiny-org/absent", True))
    with qtbot.waitSignal(importer.failed, timeout=30_000) as failed:
        dialog.import_repo_button.click()
    assert "not (completely) in the local Hugging Face cache" in failed.args[0]


def test_rename_and_delete(qtbot, monkeypatch, library):
    write_model_folder(library.folder / "first")
    write_model_folder(library.folder / "second")
    dialog, _ = open_dialog(qtbot, library)
    dialog.select("demo")
    assert not dialog.rename_button.isEnabled() and not dialog.delete_button.isEnabled()
    assert dialog.use_button.isEnabled()
    dialog.select("first")
    assert dialog.rename_button.isEnabled()
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("second", True))
    dialog.rename_button.click()
    assert dialog.message.text() == "There is already a model called 'second'."
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("renamed", True))
    with qtbot.waitSignal(dialog.model_renamed) as renamed:
        dialog.rename_button.click()
    assert renamed.args == ["first", "renamed"]
    assert dialog.selected().name == "renamed"
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Cancel)
    dialog.delete_button.click()
    assert library.get("renamed") is not None
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    with qtbot.waitSignal(dialog.model_deleted) as deleted:
        dialog.delete_button.click()
    assert deleted.args == ["renamed"]
    assert [m.name for m in library.models()] == ["second", "demo"]
    assert dialog.message.text() == "Deleted renamed."


def test_dropping_a_checkpoint_on_the_dialog_imports_it(qtbot, tmp_path, library):
    calls = []

    def fake_convert(source, output, options, on_progress, cancel):
        calls.append((source, output.name, options.dtype))
        write_model_folder(Path(output))
        return None

    importer = ModelImporter(convert=fake_convert)
    dialog, _ = open_dialog(qtbot, library, importer)
    checkpoint = tmp_path / "dropped.safetensors"
    checkpoint.write_bytes(b"x")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(checkpoint))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(importer.imported, timeout=10_000):
        dialog.dropEvent(event)
    assert event.isAccepted()
    assert calls == [(str(checkpoint), "dropped", "float32")]
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path / "picture.png"))])
    other = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    dialog.dropEvent(other)
    assert len(calls) == 1


def test_an_unreadable_models_folder_is_a_message(qtbot, monkeypatch, library):
    def unreadable(self, source):
        raise PermissionError(13, "Permission denied", str(self.folder))

    monkeypatch.setattr(ModelLibrary, "import_target", unreadable)
    importer = ModelImporter()
    with qtbot.waitSignal(importer.failed) as failed:
        assert not importer.start("x.safetensors", library, ConvertOptions())
    assert failed.args[0].startswith("The library's models folder cannot be read: ")
    assert not importer.busy
