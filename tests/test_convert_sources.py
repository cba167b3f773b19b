"""Where models come from: diffusers folders (variants, shards, a replacement VAE), Hugging Face repos
(a fake hub cache laid out as huggingface_hub lays it out, read offline; and the download call mocked to
check which files are asked for), and the `mlx-sd convert` command."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_sd.pipeline import Pipeline
from safetensors.torch import load_file, save_file

from cli.main import main
from convert import ConversionError, ConvertOptions, convert_model
from convert.hub import allow_patterns

REPO = "tiny-org/tiny-sd1"
COMMIT = "4f1b1c7a0d2e3f4a5b6c7d8e9f00112233445566"


def _same_weights(a: Path, b: Path, component: str) -> bool:
    x, y = mx.load(str(a / f"{component}.safetensors")), mx.load(str(b / f"{component}.safetensors"))
    return x.keys() == y.keys() and all(mx.array_equal(x[k], y[k]).item() for k in x)


@pytest.fixture(scope="module")
def sd1_reference(tiny_models, tmp_path_factory):
    """The sd1 diffusers folder converted as is (float32): what every other route must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "sd1"
    convert_model(tiny_models.diffusers("sd1"), out, ConvertOptions(dtype="float32"))
    return out


def _hub_like_folder(tiny_models, root: Path) -> Path:
    """The sd1 folder as a hub repo has it: plus fp16 variants and files a conversion must not fetch."""
    folder = root / "repo"
    shutil.copytree(tiny_models.diffusers("sd1"), folder)
    for component, name, pickle in (
        ("unet", "diffusion_pytorch_model", "diffusion_pytorch_model.bin"),
        ("vae", "diffusion_pytorch_model", "diffusion_pytorch_model.bin"),
        ("text_encoder", "model", "pytorch_model.bin"),
    ):
        state = load_file(str(folder / component / f"{name}.safetensors"))
        save_file({k: v.half() for k, v in state.items()}, str(folder / component / f"{name}.fp16.safetensors"))
        (folder / component / pickle).write_bytes(b"pickle")
    (folder / "safety_checker").mkdir()
    (folder / "safety_checker" / "model.safetensors").write_bytes(b"not needed")
    (folder / "v1-5-pruned.ckpt").write_bytes(b"not needed")
    return folder


def _fake_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """huggingface_hub's cache layout: blobs by hash, snapshots/<commit>/ of symlinks, refs/main."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    (storage / "blobs").mkdir()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = storage / "snapshots" / COMMIT / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (len(path.relative_to(folder).parts) + 1)) / "blobs" / blob.name)


def test_repo_from_an_offline_hub_cache(tiny_models, sd1_reference, tmp_path):
    _fake_cache(tmp_path / "cache", REPO, _hub_like_folder(tiny_models, tmp_path))
    report = convert_model(REPO, tmp_path / "out", ConvertOptions(dtype="float32", hub_cache=tmp_path / "cache"))
    assert (report.source_kind, report.source, report.family) == ("Hugging Face repo", REPO, "sd1")
    unet_file = tiny_models.diffusers("sd1") / "unet" / "diffusion_pytorch_model.safetensors"
    assert report.sha256 == hashlib.sha256(unet_file.read_bytes()).hexdigest()
    assert "UNet weights file" in report.hashed
    for component in ("unet", "vae", "text_encoder"):
        assert _same_weights(tmp_path / "out", sd1_reference, component)


def test_repo_missing_from_the_offline_cache(tmp_path):
    (tmp_path / "cache").mkdir()
    with pytest.raises(ConversionError, match="tiny-org/absent is not .*in the local Hugging Face cache"):
        convert_model("tiny-org/absent", tmp_path / "out", ConvertOptions(hub_cache=tmp_path / "cache"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_download_asks_only_for_needed_files(tiny_models, tmp_path, monkeypatch, variant):
    """The download call is mocked; it serves what the hub would for our allow-patterns, using
    huggingface_hub's own pattern filter over a repo that also holds files we must not fetch."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    repo = _hub_like_folder(tiny_models, tmp_path)
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, cache_dir=None):
        calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns})
        snapshot = tmp_path / "snapshot"
        files = [str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()]
        for name in filter_repo_objects(files, allow_patterns=allow_patterns):
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(repo / name, snapshot / name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    options = ConvertOptions(dtype="float32", revision="v1", variant=variant)
    report = convert_model(REPO, tmp_path / "out", options)
    assert calls == [{"repo_id": REPO, "revision": "v1", "allow_patterns": allow_patterns(variant)}]
    snapshot = tmp_path / "snapshot"
    fetched = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())
    assert not [f for f in fetched if f.endswith((".bin", ".ckpt")) or f.startswith("safety_checker")]
    weights = [f for f in fetched if f.endswith(".safetensors")]
    assert len(weights) == 3 and all((".fp16." in f) == (variant == "fp16") for f in weights)
    assert report.source == f"{REPO}@v1"
    unet = mx.load(str(tmp_path / "out" / "unet.safetensors"))
    fp16 = load_file(str(repo / "unet" / "diffusion_pytorch_model.fp16.safetensors"))["conv_in.weight"]
    exact = mx.array_equal(unet["conv_in.weight"], mx.array(fp16.float().numpy().transpose(0, 2, 3, 1))).item()
    assert exact == (variant == "fp16")


def test_missing_variant_is_explained(tiny_models, tmp_path):
    expected = r"unet: no diffusion_pytorch_model.fp16.safetensors \(variant fp16\).*drop --variant"
    with pytest.raises(ConversionError, match=expected):
        convert_model(tiny_models.diffusers("sd1"), tmp_path / "out", ConvertOptions(variant="fp16"))


def test_sharded_diffusers_weights(tiny_models, sd1_reference, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_models.diffusers("sd1"), folder)
    single = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(single))
    single.unlink()
    keys = sorted(state)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[::2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[1::2]}
    for name, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, str(folder / "unet" / name))
    index = {"weight_map": {k: name for name, shard_keys in shards.items() for k in shard_keys}}
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    report = convert_model(folder, tmp_path / "out", ConvertOptions(dtype="float32"))
    assert _same_weights(tmp_path / "out", sd1_reference, "unet")
    concatenated = b"".join((folder / "unet" / name).read_bytes() for name in sorted(shards))
    assert report.sha256 == hashlib.sha256(concatenated).hexdigest()


@pytest.mark.parametrize("naming", ["ldm", "diffusers"])
def test_replacement_vae(tiny_models, tmp_path, naming):
    """sd1's checkpoint with sd1-inpaint's VAE (same architecture, other weights), in either naming."""
    other = tmp_path / f"other-vae-{naming}.safetensors"
    if naming == "ldm":
        state = load_file(str(tiny_models.single_file("sd1-inpaint")))
        prefix = "first_stage_model."
        save_file({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, str(other))
    else:
        shutil.copyfile(tiny_models.diffusers("sd1-inpaint") / "vae" / "diffusion_pytorch_model.safetensors", other)
    convert_model(tiny_models.diffusers("sd1-inpaint"), tmp_path / "inpaint", ConvertOptions(dtype="float32"))
    for source in (tiny_models.single_file("sd1"), tiny_models.diffusers("sd1")):
        out = tmp_path / f"out-{source.name}"
        report = convert_model(source, out, ConvertOptions(dtype="float32", vae=other))
        assert any(other.name in note for note in report.notes)
        assert _same_weights(out, tmp_path / "inpaint", "vae")
        assert not _same_weights(out, tmp_path / "inpaint", "unet")


def test_converted_folder_loads_with_tokenizers(tiny_models, tmp_path):
    convert_model(tiny_models.single_file("sdxl"), tmp_path / "out")
    pipe = Pipeline.load(tmp_path / "out")
    assert pipe.config.dtype == "float16" and pipe.dtype == mx.float32  # float16 storage, CPU computes float32
    ids, ids_2 = pipe.tokenizer("a photo of a cat"), pipe.tokenizer_2("a photo of a cat")
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and ids_2[:7] == ids[:7]
    assert (ids[7], ids_2[7]) == (49407, 0)  # OpenAI CLIP pads with EOS, OpenCLIP with 0
    tokenizer_2 = json.loads((tmp_path / "out" / "tokenizer_2" / "tokenizer_config.json").read_text())
    assert tokenizer_2["pad_token"] == "!"


def test_cli_prints_what_it_detected(tiny_models, tmp_path, capsys):
    path = tiny_models.single_file("sd1-inpaint")
    assert main(["convert", str(path), str(tmp_path / "out"), "--dtype", "float32"]) == 0
    out = capsys.readouterr()
    assert "family:      sd1 (inpainting)  [OpenAI CLIP text encoder]" in out.out
    assert "prediction:  epsilon" in out.out
    assert f"model hash:  {hashlib.sha256(path.read_bytes()).hexdigest()[:10]}" in out.out
    assert "reading and converting tensors" in out.err and "loading the result back" in out.err
    assert main(["convert", str(path), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip().endswith("already exists; choose another folder or delete it")


def test_cli_entry_point(tiny_models, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "cli", "convert", str(tiny_models.diffusers("sdxl-refiner")), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "family:      sdxl-refiner" in done.stdout
    assert json.loads((tmp_path / "out" / "model.json").read_text())["requires_aesthetics_score"] is True


def test_text_encoder_saved_without_text_model_prefix(tiny_models, sd1_reference, tmp_path):
    """transformers 5 saves CLIPTextModel weights without `text_model.`; such folders convert the same."""
    folder = tmp_path / "new-transformers"
    shutil.copytree(tiny_models.diffusers("sd1"), folder)
    weights = folder / "text_encoder" / "model.safetensors"
    state = load_file(str(weights))
    assert all(k.startswith("text_model.") for k in state)
    save_file({k[len("text_model."):]: v for k, v in state.items()}, str(weights))
    convert_model(folder, tmp_path / "out", ConvertOptions(dtype="float32"))
    assert _same_weights(tmp_path / "out", sd1_reference, "text_encoder")
