"""Bad inputs: each fails with one clear line saying what was expected, what was found and what to do,
and no conversion leaves a half-written folder behind (failure, cancel, or a result that will not load)."""

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from convert import ConversionCancelled, ConversionError, ConvertOptions, convert_model


def _fails(source, output, match, **options):
    with pytest.raises(ConversionError, match=match) as info:
        convert_model(source, output, ConvertOptions(**options))
    assert "\n" not in str(info.value)
    assert not output.exists()
    return str(info.value)


def _leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_truncated_file(tiny_models, tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(tiny_models.single_file("sd1").read_bytes()[:-1000])
    _fails(path, tmp_path / "out", r"cut.safetensors is truncated: tensor .* download or copy it again")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(os.urandom(100_000))
    _fails(path, tmp_path / "out", "noise.safetensors is not a valid safetensors file")


def test_lora_file(tmp_path):
    path = tmp_path / "style.safetensors"
    base = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{base}.lora_down.weight": torch.zeros(4, 32), f"{base}.lora_up.weight": torch.zeros(32, 4),
               f"{base}.alpha": torch.tensor(4.0)}, str(path))
    _fails(path, tmp_path / "out", "style.safetensors is a LoRA .* apply it at generation time")


def test_vae_only_file(tiny_models, tmp_path):
    prefix = "first_stage_model."
    state = load_file(str(tiny_models.single_file("sd1")))
    path = tmp_path / "vae.safetensors"
    save_file({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, str(path))
    _fails(path, tmp_path / "out", "vae.safetensors is a VAE on its own.*--vae vae.safetensors")


def test_textual_inversion_embedding(tmp_path):
    path = tmp_path / "embedding.safetensors"
    save_file({"emb_params": torch.zeros(2, 768)}, str(path))
    _fails(path, tmp_path / "out", "textual-inversion embedding")


def test_missing_tensor(tiny_models, tmp_path):
    state = load_file(str(tiny_models.single_file("sd1")))
    del state["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_v.weight"]
    path = tmp_path / "holed.safetensors"
    save_file(state, str(path))
    _fails(path, tmp_path / "out",
           r"unet: missing weight 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v.weight' "
           r"\(expected shape \(32, 32\), found none\); the checkpoint is incomplete")


def test_missing_text_encoder(tiny_models, tmp_path):
    state = load_file(str(tiny_models.single_file("sd1")))
    path = tmp_path / "unet-and-vae.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("cond_stage_model.")}, str(path))
    expected = r"has no text_encoder weights \(expected keys under cond_stage_model.transformer.\*\)"
    _fails(path, tmp_path / "out", expected, family="sd1")


def test_unknown_architecture(tmp_path):
    path = tmp_path / "llm.safetensors"
    save_file({"model.layers.0.mlp.weight": torch.zeros(4, 4), "lm_head.weight": torch.zeros(4, 4)}, str(path))
    _fails(path, tmp_path / "out", "llm.safetensors has an unknown architecture: no Stable Diffusion UNet weights")


def test_unknown_diffusers_pipeline(tiny_models, tmp_path):
    import shutil

    folder = tmp_path / "flux"
    shutil.copytree(tiny_models.configs_only("sd1"), folder)
    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    _fails(folder, tmp_path / "out", "unknown architecture: pipeline FluxPipeline")


def test_output_that_exists(tiny_models, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ConversionError, match="output .*out already exists; choose another folder or delete it"):
        convert_model(tiny_models.single_file("sd1"), tmp_path / "out")


def test_no_such_source(tmp_path):
    _fails(tmp_path / "nothing.safetensors", tmp_path / "out", "no such file or folder")


def _pickle(tiny_models, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(tiny_models.single_file("sd1"))), "global_step": 470000}, path)
    return path


def test_pickle_refused_without_flag(tiny_models, tmp_path):
    message = _fails(_pickle(tiny_models, tmp_path), tmp_path / "out", "model.ckpt is a pickle checkpoint")
    assert "can run code" in message and "--allow-pickle" in message


def test_pickle_with_flag_matches_the_safetensors_file(tiny_models, tmp_path):
    import mlx.core as mx

    path = _pickle(tiny_models, tmp_path)
    report = convert_model(path, tmp_path / "from-ckpt", ConvertOptions(dtype="float32", allow_pickle=True))
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    convert_model(tiny_models.single_file("sd1"), tmp_path / "from-st", ConvertOptions(dtype="float32"))
    for component in ("unet", "vae", "text_encoder"):
        a = mx.load(str(tmp_path / "from-ckpt" / f"{component}.safetensors"))
        b = mx.load(str(tmp_path / "from-st" / f"{component}.safetensors"))
        assert a.keys() == b.keys() and all(mx.array_equal(a[k], b[k]).item() for k in a)


def test_pickle_that_needs_code_is_refused_even_with_the_flag(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Payload()}, path)
    _fails(path, tmp_path / "out", "holds objects other than tensors", allow_pickle=True)


def test_a_file_that_is_no_torch_checkpoint_says_so_in_one_short_line(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_text("this is a text file, not a model\n")
    _fails(path, tmp_path / "out", re.escape("garbage.pth is not a torch checkpoint (neither a zip archive nor a pickle)"),
           allow_pickle=True)


class _Payload:
    """Any class outside torch's weights-only allow-list (a real attack would use __reduce__)."""


def test_cancel_leaves_nothing_behind(tiny_models, tmp_path):
    source = tiny_models.single_file("sd1")
    calls = []
    with pytest.raises(ConversionCancelled):
        convert_model(source, tmp_path / "out", cancel=lambda: len(calls) > 20, on_progress=calls.append)
    assert {p.stage for p in calls} == {"read"}
    assert _leftovers(tmp_path, keep=set()) == []


def test_cancel_during_validation_removes_the_written_folder(tiny_models, tmp_path):
    stages = []
    with pytest.raises(ConversionCancelled):
        convert_model(tiny_models.single_file("sd1"), tmp_path / "out", on_progress=lambda p: stages.append(p.stage),
                      cancel=lambda: "validate" in stages)
    assert "write" in stages and _leftovers(tmp_path, keep=set()) == []


def test_result_that_does_not_load_is_removed(tiny_models, tmp_path, monkeypatch):
    from mlx_sd.model_format import WeightsError

    import convert.orchestrator as orchestrator

    def broken_load(folder, dtype=None):
        assert (folder / "model.json").is_file()  # it was written...
        raise WeightsError("unet: weight 'conv_in.weight' has shape (1,), the model expects (2,)")

    monkeypatch.setattr(orchestrator.Pipeline, "load", broken_load)
    _fails(tiny_models.single_file("sd1"), tmp_path / "out", "the converted model does not load")
    assert _leftovers(tmp_path, keep=set()) == []  # ...and removed again


def test_pickle_path_without_torch(tmp_path, monkeypatch):
    from convert.pickle_file import PickleCheckpoint

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ConversionError, match="reading model.ckpt needs PyTorch, which is not installed"):
        PickleCheckpoint(tmp_path / "model.ckpt")


def test_converter_does_not_import_torch():
    code = "import sys, convert, cli.convert, convert.hub; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
