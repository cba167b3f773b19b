"""`mlx-sd models`: the library's models, LoRAs, embeddings, VAEs and upscalers with family and size, as
tables or JSON; damaged files listed with their one-line problem, never a traceback."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from cli.main import main
from cli.models import human_size
from mlx_sd.vae import AutoencoderKL
from model_folders import CONFIGS, write_random_model

SD1_LORA_KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def save(path: Path, tensors: dict[str, mx.array]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(path), tensors)
    return path


def truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    return path


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("library")
    write_random_model(root / "models" / "tiny-sd1", CONFIGS["sd1"])
    (root / "models" / "broken").mkdir()  # no model.json
    save(root / "loras" / "ink-sd1.safetensors", {
        f"{SD1_LORA_KEY}.lora_down.weight": mx.zeros((4, 768)), f"{SD1_LORA_KEY}.lora_up.weight": mx.zeros((320, 4)),
    })
    save(root / "loras" / "pixel-xl.safetensors", {
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": mx.zeros((4, 768)),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": mx.zeros((3072, 4)),
    })
    save(root / "loras" / "negatives-xl.safetensors", {  # bundled embeddings only: their widths tell the family
        "bundle_emb.xl-bad.clip_l": mx.zeros((2, 768)), "bundle_emb.xl-bad.clip_g": mx.zeros((2, 1280)),
        "bundle_emb.blurry.clip_l": mx.zeros((1, 768)), "bundle_emb.blurry.clip_g": mx.zeros((1, 1280)),
    })
    truncated(save(root / "loras" / "cut.safetensors", {f"{SD1_LORA_KEY}.lora_down.weight": mx.zeros((4, 768))}))
    (root / "loras" / "old.pt").write_bytes(b"not read")
    save(root / "embeddings" / "EasyNegative.safetensors", {"emb_params": mx.zeros((2, 768))})
    save(root / "embeddings" / "xl-neg.safetensors", {"clip_l": mx.zeros((3, 768)), "clip_g": mx.zeros((3, 1280))})
    save(root / "embeddings" / "not-an-embedding.safetensors", {"a": mx.zeros(2), "b": mx.zeros(2)})
    vae = AutoencoderKL(CONFIGS["sd1"].vae)
    save(root / "vae" / "vae-ft-mse.safetensors", dict(tree_flatten(vae.parameters())))
    (root / "vae" / "notes.txt").write_text("not a VAE suffix: not listed")
    truncated(save(root / "upscalers" / "4x-cut.safetensors", {"w": mx.zeros((64, 64))}))
    return root


def models(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["models", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_tables_name_family_size_and_problems(library, capsys) -> None:
    code, out, err = models(capsys, "--library", str(library))
    assert code == 0 and err == ""
    lines = [line.split() for line in out.splitlines()]
    assert ["tiny-sd1", *human_size(sum(p.stat().st_size for p in (library / "models" / "tiny-sd1").rglob("*") if p.is_file())).split(), "SD", "1.x"] in lines
    assert any(line[:2] == ["broken", "0"] and "problem:" in line for line in lines)
    assert out.count("\n  ink-sd1 ") == 1 and "SD 1.x" in out.split("\n  ink-sd1 ")[1].splitlines()[0]
    assert "SDXL" in out.split("\n  pixel-xl ")[1].splitlines()[0]
    assert "SDXL, bundles blurry, xl-bad" in out.split("\n  negatives-xl ")[1].splitlines()[0]
    assert "problem: cut.safetensors cannot be read" in out
    assert "a pickle, not read (--allow-pickle reads it)" in out.split("\n  old ")[1].splitlines()[0]
    assert "2 vectors of width 768 (SD 1.x)" in out and "3 vectors of width 768+1280 (SDXL)" in out
    assert "problem: not-an-embedding is not a textual-inversion embedding" in out
    assert "vae-ft-mse" in out and "notes" not in out
    assert "problem: 4x-cut.safetensors" in out


def test_json_lists_every_kind_with_sizes_in_bytes(library, capsys) -> None:
    code, out, _ = models(capsys, "--library", str(library), "--json")
    listing = json.loads(out)
    assert code == 0 and listing["library"] == str(library)
    assert set(listing) == {"library", "models", "loras", "embeddings", "vae", "upscalers"}
    by_name = {item["name"]: item for kind in ("models", "loras", "embeddings", "vae", "upscalers") for item in listing[kind]}
    assert by_name["tiny-sd1"]["family"] == "SD 1.x" and by_name["tiny-sd1"]["problem"] is None
    assert by_name["ink-sd1"]["family"] == ["SD 1.x"] and by_name["pixel-xl"]["family"] == ["SDXL"]
    assert by_name["negatives-xl"]["family"] == ["SDXL"] and by_name["negatives-xl"]["embeddings"] == ["blurry", "xl-bad"]
    assert {k: by_name["EasyNegative"][k] for k in ("vectors", "width", "family")} == {"vectors": 2, "width": "768", "family": "SD 1.x"}
    assert by_name["vae-ft-mse"]["size_bytes"] == (library / "vae" / "vae-ft-mse.safetensors").stat().st_size
    assert by_name["cut"]["problem"].startswith("cut.safetensors cannot be read")
    assert "\n" not in by_name["cut"]["problem"]


def test_an_empty_library_says_where_things_go(tmp_path, capsys) -> None:
    code, out, _ = models(capsys, "--library", str(tmp_path))
    assert code == 0
    assert f"none (put them in {tmp_path / 'loras'})" in out


def test_describing_takes_time_linear_in_files(tmp_path) -> None:
    from mlx_sd.library import Library
    from mlx_sd.library_listing import describe_library

    def seconds(count: int) -> float:
        root = tmp_path / str(count)
        for i in range(count):
            save(root / "embeddings" / f"e{i}.safetensors", {"emb_params": mx.zeros((1, 768))})
        started = time.perf_counter()
        describe_library(Library(root))
        return time.perf_counter() - started

    small, large = seconds(50), seconds(200)
    assert large < 4 * small * 3  # 4x the files: well under the 16x of a quadratic walk


def test_human_sizes() -> None:
    assert [human_size(n) for n in (0, 999, 1500, 2_500_000, 7_100_000_000)] == ["0 B", "999 B", "1.5 KB", "2.5 MB", "7.1 GB"]


def test_the_server_lists_the_shared_librarys_vae_folder(library) -> None:
    from server.library import Library as ServedLibrary

    served = ServedLibrary(library)
    assert [p.name for p in served.files("vae")] == ["vae-ft-mse.safetensors"]
    assert [p.stem for p in served.files("loras")] == ["cut", "ink-sd1", "negatives-xl", "old", "pixel-xl"]


# ---------------------------------------------------------------------------------------------
# mlx-sd generate --model NAME --vae NAME|FILE


@pytest.fixture(scope="module")
def generate_library(tiny_models, tmp_path_factory) -> Path:
    """A library with the tiny sd1 model converted as `tiny` and sd1-inpaint's VAE as `other-vae`."""
    from safetensors.torch import load_file, save_file

    from convert.options import ConvertOptions
    from convert.orchestrator import convert_model

    root = tmp_path_factory.mktemp("generate_library")
    convert_model(tiny_models.diffusers("sd1"), root / "models" / "tiny", ConvertOptions(dtype="float32"))
    state = load_file(str(tiny_models.single_file("sd1-inpaint")))
    (root / "vae").mkdir()
    save_file({k[len("first_stage_model."):]: v for k, v in state.items() if k.startswith("first_stage_model.")},
              str(root / "vae" / "other-vae.safetensors"))
    return root


def generate(capsys, library: Path, out: Path, *args: str) -> tuple[int, list[Path], str]:
    code = main(["generate", "a red circle", "--library", str(library), "--output", str(out), "--steps", "2",
                 "--width", "64", "--height", "64", "--seed", "5", *args])
    captured = capsys.readouterr()
    return code, [Path(line) for line in captured.out.splitlines()], captured.err


def test_generate_takes_a_library_model_and_vae_by_name(generate_library, tmp_path, capsys) -> None:
    from mlx_sd.image_metadata import read_infotext
    from mlx_sd.infotext import parse_infotext

    code, paths, err = generate(capsys, generate_library, tmp_path, "--model", "tiny", "--vae", "other-vae")
    assert code == 0 and len(paths) == 1, err
    params = parse_infotext(read_infotext(paths[0])).params
    assert params["VAE"] == "other-vae.safetensors" and len(params["VAE hash"]) == 10
    code, paths, err = generate(capsys, generate_library, tmp_path, "--model", "tiny", "--vae", "Automatic")
    assert code == 0 and "VAE" not in parse_infotext(read_infotext(paths[0])).params


@pytest.mark.parametrize("args, expected", [
    (("--model", "tiyn"), "no model named 'tiyn' in {library}/models (closest: tiny)"),
    (("--model", "tiny", "--vae", "other-vea"), "no VAE named 'other-vea' in {library}/vae (closest: other-vae)"),
    (("--model", "tiny", "--vae", "{checkpoint}"), "is a whole checkpoint (it holds a UNet), not a VAE"),
    (("--model", "tiny", "--vae", "{truncated}"), "cut.safetensors is truncated"),
])
def test_bad_names_and_vaes_are_one_line_with_exit_code_2(
    generate_library, tiny_models, tmp_path, capsys, args, expected
) -> None:
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((generate_library / "vae" / "other-vae.safetensors").read_bytes()[:-1000])
    names = {"library": generate_library, "checkpoint": tiny_models.single_file("sd1"), "truncated": cut}
    out = tmp_path / "out"
    code, paths, err = generate(capsys, generate_library, out, *(a.format(**names) for a in args))
    assert code == 2 and paths == [] and not list(out.glob("*.png"))
    errors = [line for line in err.splitlines() if not line.startswith("loading ")]  # the model may load first
    assert len(errors) == 1 and errors[0].startswith("mlx-sd generate: error: ")
    assert expected.format(**names) in errors[0]


def test_model_names_paths_and_demo(library, tmp_path) -> None:
    from mlx_sd.library import Library, LibraryError
    from mlx_sd.model_paths import resolve_model_folder

    shared = Library(library)
    assert resolve_model_folder("tiny-sd1", library=shared) == library / "models" / "tiny-sd1"
    assert resolve_model_folder("TINY-sd1", library=shared) == library / "models" / "tiny-sd1"  # case ignored
    missing = tmp_path / "nowhere"
    assert resolve_model_folder(str(missing), library=shared) == missing  # a path: read_config says what is wrong
    with pytest.raises(LibraryError, match="no model named 'tiny-sd' .*closest: tiny-sd1"):
        resolve_model_folder("tiny-sd", library=shared)


def test_the_server_takes_sd_vae_from_the_librarys_vae_folder_only(library, tmp_path) -> None:
    from mlx_sd.library import LibraryError
    from mlx_sd.request import GenerationRequest
    from server.library import Library as ServedLibrary
    from server.schema import Txt2ImgRequest
    from server.translate import ServerOptions, a1111_request

    options = ServerOptions(sd_model_checkpoint="tiny-sd1")
    asked = a1111_request(Txt2ImgRequest(override_settings={"sd_vae": "vae-ft-mse.safetensors"}), options)
    assert asked.request.vae == "vae-ft-mse.safetensors" and "sd_vae" not in asked.not_applied
    assert a1111_request(Txt2ImgRequest(override_settings={"sd_vae": "Automatic"}), options).request.vae is None
    served = ServedLibrary(library)
    assert served.with_vae_file(asked.request).vae == str(library / "vae" / "vae-ft-mse.safetensors")
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"x")
    for name in (str(outside), "../vae/other"):
        with pytest.raises(LibraryError, match="no VAE called .* available: vae-ft-mse"):
            served.with_vae_file(GenerationRequest(vae=name))
