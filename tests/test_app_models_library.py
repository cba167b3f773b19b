"""The Qt-free model library: listing with family, size, precision and disk size; names; rename; delete."""

import dataclasses
import json
from pathlib import Path

import pytest

from mlx_sd import model_library
from mlx_sd.model_library import DEMO_NAME, ModelLibrary, ModelLibraryError, check_name, name_from_source
from mlx_sd.config import SourceInfo, preset


def write_model_folder(folder, family_preset="sd15", dtype="float16", payload=1000, source="model.safetensors"):
    """A model folder as far as listing is concerned: model.json plus a weights file of `payload` bytes."""
    config = dataclasses.replace(preset(family_preset), dtype=dtype, source=SourceInfo(source, "ab" * 32))
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps(config.to_dict()))
    (folder / "unet.safetensors").write_bytes(b"\0" * payload)
    return folder


@pytest.fixture
def library(tmp_path):
    return ModelLibrary(tmp_path / "lib", demo_folder=tmp_path / "no-demo")


def test_empty_library_lists_nothing(library):
    assert library.models() == []
    assert library.converted_models() == []
    assert not library.demo_available


def test_lists_family_native_size_precision_and_disk_size(library):
    write_model_folder(library.folder / "Base 1.5", "sd15", "float16", payload=5000, source="v1-5.safetensors")
    write_model_folder(library.folder / "xl", "sdxl", "bfloat16", payload=10)
    write_model_folder(library.folder / "v", "sd21", "float32")
    write_model_folder(library.folder / "paint", "sd15-inpaint")
    models = {m.name: m for m in library.models()}
    assert list(models) == ["Base 1.5", "paint", "v", "xl"]  # by name, case-insensitively
    base = models["Base 1.5"]
    assert (base.family, base.native_size, base.precision, base.source) == ("sd1", 512, "float16", "v1-5.safetensors")
    assert base.size_bytes == 5000 + (base.path / "model.json").stat().st_size
    assert base.family_label == "SD 1.x" and base.usable and not base.bundled
    assert (models["xl"].family_label, models["xl"].native_size, models["xl"].precision) == ("SDXL", 1024, "bfloat16")
    assert (models["v"].family_label, models["v"].native_size, models["v"].prediction_type) == ("SD 2.x", 768, "v_prediction")
    assert models["paint"].family_label == "SD 1.x inpainting"


def test_hidden_and_damaged_folders(library):
    write_model_folder(library.folder / ".x.partial-123")  # a conversion in progress
    (library.folder / "broken").mkdir()
    (library.folder / "broken" / "model.json").write_text("{not json")
    (library.folder / "empty").mkdir()
    (library.folder / "stray.txt").write_text("not a folder")
    models = library.models()
    assert [m.name for m in models] == ["broken", "empty"]
    assert all(not m.usable for m in models)
    assert "damaged" in models[0].error and "no model.json" in models[1].error
    assert library.converted_models() == []


def test_an_unreadable_model_json_is_listed_with_its_error(library, monkeypatch):
    write_model_folder(library.folder / "locked")
    write_model_folder(library.folder / "fine")
    read_text = Path.read_text

    def refuse_locked(self, *args, **kwargs):
        if self.parent.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse_locked)
    fine, locked = library.models()
    assert fine.usable and not locked.usable and "Permission denied" in locked.error


def test_demo_model_listed_when_bundled(tmp_path):
    demo = write_model_folder(tmp_path / "resources" / "demo", "sd15")
    library = ModelLibrary(tmp_path / "lib", demo_folder=demo)
    write_model_folder(library.folder / "mine")
    assert [(m.name, m.bundled) for m in library.models()] == [("mine", False), (DEMO_NAME, True)]
    assert library.demo_available and library.path_of(DEMO_NAME) == demo
    assert library.get(DEMO_NAME).bundled
    assert [m.name for m in library.converted_models()] == ["mine"]
    with pytest.raises(ModelLibraryError, match="demo model cannot be renamed or deleted"):
        library.delete(DEMO_NAME)
    with pytest.raises(ModelLibraryError, match="demo model cannot be renamed"):
        library.rename(DEMO_NAME, "other")


def test_the_repo_demo_folder_is_the_default():
    assert model_library.DEMO_FOLDER.parts[-2:] == ("resources", "demo")


def test_rename(library):
    write_model_folder(library.folder / "old")
    write_model_folder(library.folder / "Taken")
    renamed = library.rename("old", "  New name ")
    assert renamed.name == "New name" and renamed.family == "sd1"
    assert [m.name for m in library.models()] == ["New name", "Taken"]
    with pytest.raises(ModelLibraryError, match="already a model called 'taken'"):
        library.rename("New name", "taken")  # names compare case-insensitively (macOS file systems)
    with pytest.raises(ModelLibraryError, match="no model called 'missing'"):
        library.rename("missing", "x")
    assert library.rename("Taken", "TAKEN").name == "TAKEN"  # a change of case is allowed


@pytest.mark.parametrize("bad, message", [
    ("", "cannot be empty"), ("   ", "cannot be empty"), ("a/b", "cannot contain '/'"),
    ("a\\b", "cannot contain"), (".hidden", "cannot start with '.'"), ("Demo", "bundled demo"),
    ("x" * 101, "at most 100"), ("tab\there", "cannot contain"),
])
def test_bad_names_are_refused_with_the_reason(bad, message):
    with pytest.raises(ModelLibraryError, match=message):
        check_name(bad)


def test_delete_removes_the_folder_and_finishes_an_interrupted_delete(library):
    write_model_folder(library.folder / "a")
    write_model_folder(library.folder / "b")
    library.delete("a")
    assert [m.name for m in library.models()] == ["b"]
    assert not any(library.folder.glob(".deleting-*"))
    # a crash after the rename: the hidden folder is not listed and is removed on the next start
    (library.folder / "b").rename(library.folder / ".deleting-crashed")
    assert library.models() == []
    ModelLibrary(library.library)
    assert not (library.folder / ".deleting-crashed").exists()
    with pytest.raises(ModelLibraryError, match="no model called"):
        library.delete("../lib")


def test_import_names(library):
    assert name_from_source("/downloads/dreamshaper_8.safetensors") == "dreamshaper_8"
    assert name_from_source("stabilityai/stable-diffusion-xl-base-1.0") == "stable-diffusion-xl-base-1.0"
    assert name_from_source("C:\\models\\v1-5.ckpt") == "v1-5"
    assert name_from_source("///") == "model"
    write_model_folder(library.folder / "dreamshaper_8")
    write_model_folder(library.folder / ".dreamshaper_8-2.partial-abc")  # being converted right now
    name, folder = library.import_target("/d/Dreamshaper_8.safetensors")
    assert name == "Dreamshaper_8-3" and folder == library.folder / name
    assert library.import_target("/d/demo.safetensors")[0] == "demo-model"


def test_the_library_is_qt_free():
    import subprocess
    import sys

    code = "import mlx_sd.model_library, sys; assert not [m for m in sys.modules if m.startswith('PySide6')]"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0


def test_models_converted_before_read_only_files_are_sealed_so_they_map(tmp_path):
    folder = write_model_folder(tmp_path / "lib" / "models" / "old")
    assert (folder / "unet.safetensors").stat().st_mode & 0o222
    ModelLibrary(tmp_path / "lib", demo_folder=None)
    assert not (folder / "unet.safetensors").stat().st_mode & 0o222
    assert not (folder / "model.json").stat().st_mode & 0o222
