"""mlx_sd.library: resource folders, name lookup, duplicate notices and one-line errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mlx_sd.library import KINDS, SUFFIXES, Library, LibraryError, LibraryItem, default_library_folder


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_model(root: Path, name: str) -> Path:
    touch(root / "models" / name / "model.json", b"{}")
    return root / "models" / name


def test_folders_are_root_kind_and_not_created(tmp_path: Path) -> None:
    library = Library(tmp_path)
    assert library.root == tmp_path
    for kind in KINDS:
        assert library.folder(kind) == tmp_path / kind
        assert library.items(kind) == []
    assert not any(tmp_path.iterdir())
    assert library.ensure_folder("loras").is_dir()


def test_default_root_is_the_default_library_folder() -> None:
    assert Library().root == default_library_folder()


def test_items_list_files_by_stem_with_the_kinds_suffixes(tmp_path: Path) -> None:
    touch(tmp_path / "loras" / "b_style.safetensors")
    touch(tmp_path / "loras" / "A_detail.pt")
    touch(tmp_path / "loras" / "notes.txt")
    touch(tmp_path / "loras" / ".partial.safetensors")
    (tmp_path / "loras" / "folder.safetensors").mkdir()
    items = Library(tmp_path).items("loras")
    assert items == [
        LibraryItem("loras", "A_detail", tmp_path / "loras" / "A_detail.pt"),
        LibraryItem("loras", "b_style", tmp_path / "loras" / "b_style.safetensors"),
    ]
    assert ".bin" in SUFFIXES["embeddings"] and SUFFIXES["models"] == ()


def test_models_are_folders_with_model_json(tmp_path: Path) -> None:
    model = make_model(tmp_path, "dreamy")
    (tmp_path / "models" / "broken").mkdir()
    touch(tmp_path / "models" / "stray.safetensors")
    library = Library(tmp_path)
    assert library.items("models") == [LibraryItem("models", "dreamy", model)]
    assert library.find("models", "dreamy") == model
    assert library.find("models", str(model)) == model


def test_extra_folders_come_first_and_the_first_of_a_name_wins_said_once(tmp_path: Path) -> None:
    own = touch(tmp_path / "mine" / "detail.safetensors")
    library_copy = touch(tmp_path / "lib" / "loras" / "detail.safetensors")
    touch(tmp_path / "lib" / "loras" / "other.safetensors")
    library = Library(tmp_path / "lib", {"loras": [tmp_path / "mine"]})
    assert [i.path for i in library.items("loras")] == [own, tmp_path / "lib" / "loras" / "other.safetensors"]
    assert library.find("loras", "detail") == own
    assert library.notices() == [f"two LoRAs named detail: using {own}, not {library_copy}"]
    library.items("loras")
    assert library.notices() == []


def test_safetensors_wins_over_a_pickle_of_the_same_name(tmp_path: Path) -> None:
    pickle = touch(tmp_path / "embeddings" / "bad.pt")
    safe = touch(tmp_path / "embeddings" / "bad.safetensors")
    library = Library(tmp_path)
    assert library.find("embeddings", "bad") == safe
    assert library.notices() == [f"two embeddings named bad: using {safe}, not {pickle}"]


def test_an_existing_file_is_used_as_is(tmp_path: Path) -> None:
    elsewhere = touch(tmp_path / "downloads" / "x.safetensors")
    assert Library(tmp_path / "lib").find("loras", str(elsewhere)) == elsewhere


def test_names_match_exactly_then_ignoring_case(tmp_path: Path) -> None:
    lower = touch(tmp_path / "vae" / "sdxl_vae.safetensors")
    library = Library(tmp_path)
    assert library.find("vae", "sdxl_vae") == lower
    assert library.find("vae", "SDXL_VAE") == lower


def test_unknown_name_lists_the_closest_names(tmp_path: Path) -> None:
    for name in ("EasyNegative", "badhandv4", "ng_deepnegative_v1_75t"):
        touch(tmp_path / "embeddings" / f"{name}.safetensors")
    with pytest.raises(LibraryError) as caught:
        Library(tmp_path).find("embeddings", "EasyNegativ")
    message = str(caught.value)
    assert "\n" not in message
    assert "no embedding named 'EasyNegativ'" in message and "closest: EasyNegative" in message


def test_unknown_name_in_an_empty_library_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(LibraryError, match=r"no LoRA named 'x': there are no LoRAs in .*mine, .*loras"):
        Library(tmp_path, {"loras": [tmp_path / "mine"]}).find("loras", "x")


def test_a_missing_path_says_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(LibraryError, match="LoRA file not found: .*gone.safetensors"):
        Library(tmp_path).find("loras", str(tmp_path / "gone.safetensors"))


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LibraryError, match="unknown library kind 'vaes'"):
        Library(tmp_path).folder("vaes")
    with pytest.raises(LibraryError, match="unknown library kind"):
        Library(tmp_path, {"lora": [tmp_path]})


def test_lookup_of_a_long_name_stays_fast(tmp_path: Path) -> None:
    for index in range(50):
        touch(tmp_path / "loras" / f"style_{index:03d}.safetensors")
    library = Library(tmp_path)
    start = time.perf_counter()
    with pytest.raises(LibraryError):
        library.find("loras", "s" * 200_000)
    assert time.perf_counter() - start < 2.0


def test_the_app_folder_module_re_exports_the_engine_rule() -> None:
    from app import library_folder

    assert library_folder.default_library_folder is default_library_folder


def test_a_names_only_library_refuses_paths_even_to_existing_files(tmp_path):
    """The HTTP server's library: a client names what the library holds and cannot point at other files."""
    outside = tmp_path / "elsewhere" / "secret.safetensors"
    outside.parent.mkdir()
    outside.write_bytes(b"x")
    (tmp_path / "lib" / "loras").mkdir(parents=True)
    (tmp_path / "lib" / "loras" / "style.safetensors").write_bytes(b"x")
    library = Library(tmp_path / "lib", names_only=True)
    assert library.find("loras", "style") == tmp_path / "lib" / "loras" / "style.safetensors"
    with pytest.raises(LibraryError, match="named, not given as paths"):
        library.find("loras", str(outside))
    assert Library(tmp_path / "lib").find("loras", str(outside)) == outside
