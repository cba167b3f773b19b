"""LoRA merging against the references, on the tiny SD1 and SDXL models (tests/tiny_models.py).

kohya (linear + LoCon, diffusers and LDM spellings) and PEFT LoRAs: our merged weights equal diffusers'
load_lora_weights + fuse_lora on the same model. LoHa and LoKr: equal
the lycoris-lora package's own weight computation. Weights 0 (bit-identical to none), 0.5, 1 and -1;
undo is exact; a failed LoRA leaves the weights untouched.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import safetensors.torch
import torch
from mlx.utils import tree_flatten

from convert import ConvertOptions, convert_model
from mlx_sd.cpu.lora_merge import merging_for
from mlx_sd.lora import LoraError, LoraMerger, LoraUse, merge, read_lora
from mlx_sd.pipeline import Pipeline

RANK = 4
WEIGHTS = (0.5, 1.0, -1.0)

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


class Loaded:
    """A tiny kind converted to our format and loaded, with its diffusers folder."""

    def __init__(self, source: Path, ours: Path):
        self.source = source
        self.pipeline = Pipeline.load(ours, dtype="float32")
        p = self.pipeline
        self.models = {name: getattr(p, name) for name in COMPONENTS if getattr(p, name) is not None}
        # merged as the pipeline merges: in one pass of the compiled kernel on the CPU
        self.merger = LoraMerger(self.models, p.config.family, p.config.unet.layers_per_block, merging_for(p.cpu))

    def weights(self) -> dict[tuple[str, str], np.ndarray]:
        return {(component, name): np.array(array) for component, model in self.models.items()
                for name, array in tree_flatten(model.parameters())}  # fmt: skip

    def reference(self):
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(self.source, dtype=torch.float32)


@pytest.fixture(scope="module")
def loaded(tiny_models, tmp_path_factory):
    cache: dict[str, Loaded] = {}

    def load(kind: str) -> Loaded:
        if kind not in cache:
            source = tiny_models.diffusers(kind)
            ours = convert_model(source, tmp_path_factory.mktemp(kind) / "model", ConvertOptions(dtype="float32")).output
            cache[kind] = Loaded(source, ours)
        return cache[kind]

    return load


def _targets(module: torch.nn.Module, convs: bool) -> list[tuple[str, torch.nn.Module]]:
    """Attention and feed-forward linears, plus (with `convs`) 1x1 and 3x3 convolutions (LoCon)."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d) if convs else (torch.nn.Linear,)
    return [(name, m) for name, m in module.named_modules() if isinstance(m, kinds) and name]


def _lora_pair(layer: torch.nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(layer, torch.nn.Conv2d):
        out_ch, in_ch, kh, kw = layer.weight.shape
        return (torch.randn(RANK, in_ch, kh, kw, generator=gen) * 0.1, torch.randn(out_ch, RANK, 1, 1, generator=gen) * 0.1)
    out_f, in_f = layer.weight.shape
    return torch.randn(RANK, in_f, generator=gen) * 0.1, torch.randn(out_f, RANK, generator=gen) * 0.1


KOHYA_TE = {"text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}


def kohya_lora(pipe, path: Path, sdxl: bool, ldm_names: bool = False) -> Path:
    """Random kohya LoRA: every UNet linear and conv except conv_in/conv_out (LoCon), every text linear;
    `ldm_names`: UNet layers in the LDM spelling where _ldm_name knows it."""
    gen = torch.Generator().manual_seed(17)
    state = {}
    prefixes = {"text_encoder": "lora_te1_" if sdxl else "lora_te_", "text_encoder_2": "lora_te2_"}
    for component, prefix in [("unet", "lora_unet_"), *prefixes.items()]:
        model = getattr(pipe, component, None)
        if model is None:
            continue
        for name, layer in _targets(model, convs=component == "unet"):
            if name in ("conv_in", "conv_out", "text_projection") or "embedding" in name:
                continue
            down, up = _lora_pair(layer, gen)
            if component != "unet" and not name.startswith("text_model."):
                name = f"text_model.{name}"  # kohya's spelling (transformers 5 dropped the level)
            key = prefix + ((ldm_names and component == "unet" and _ldm_name(name)) or name.replace(".", "_"))
            state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
            state[f"{key}.alpha"] = torch.tensor(float(RANK) / 2)
    safetensors.torch.save_file(state, str(path))
    return path


def peft_lora(pipe, path: Path) -> Path:
    """Random diffusers / PEFT LoRA (lora_A / lora_B) on the UNet's attention and the text encoder."""
    gen = torch.Generator().manual_seed(23)
    state = {}
    for component in ("unet", "text_encoder"):
        for name, layer in _targets(getattr(pipe, component), convs=False):
            if ("attn" not in name and "proj" not in name) or "text_projection" in name:
                continue
            down, up = _lora_pair(layer, gen)
            state[f"{component}.{name}.lora_A.weight"], state[f"{component}.{name}.lora_B.weight"] = down, up
    safetensors.torch.save_file(state, str(path))
    return path


def diffusers_fused(loaded: Loaded, lora: Path, weight: float) -> dict[tuple[str, str], np.ndarray]:
    """diffusers' load_lora_weights + fuse_lora, in our layout (conv [out, kH, kW, in])."""
    pipe = loaded.reference()
    pipe.load_lora_weights(str(lora))
    pipe.fuse_lora(components=[c for c in COMPONENTS if getattr(pipe, c, None) is not None], lora_scale=weight)
    pipe.unload_lora_weights()
    fused = {}
    for component in loaded.models:
        for name, tensor in getattr(pipe, component).state_dict().items():
            array = tensor.detach().numpy()
            if component != "unet" and not name.startswith(("text_model.", "text_projection")):
                name = f"text_model.{name}"  # our names keep transformers 4's level
            fused[(component, name)] = array.transpose(0, 2, 3, 1) if array.ndim == 4 else array
    return fused


def _max_error(ours: dict, reference: dict) -> float:
    shared = [key for key in ours if key in reference]
    assert len(shared) == len(ours)
    return max(float(np.abs(ours[key] - reference[key]).max()) for key in shared)


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
@pytest.mark.parametrize("weight", WEIGHTS)
def test_kohya_locon_equals_diffusers(loaded, tmp_path, kind, weight):
    model = loaded(kind)
    reference = model.reference()
    path = kohya_lora(reference, tmp_path / "style.safetensors", sdxl=kind == "sdxl")
    before = model.weights()
    report = model.merger.apply([LoraUse(read_lora(path), weight, weight)])
    try:
        assert report.unmatched == {}
        merged = model.weights()
        assert _max_error(merged, diffusers_fused(model, path, weight)) <= 1e-5
        assert _max_error(merged, before) > 1e-3  # it did change something
    finally:
        model.merger.remove_all()
    assert all(np.array_equal(before[key], array) for key, array in model.weights().items())


def test_peft_equals_diffusers(loaded, tmp_path):
    model = loaded("sd1")
    path = peft_lora(model.reference(), tmp_path / "peft.safetensors")
    for weight in WEIGHTS:
        model.merger.apply([LoraUse(read_lora(path), weight, weight)])
        try:
            assert _max_error(model.weights(), diffusers_fused(model, path, weight)) <= 1e-5
        finally:
            model.merger.remove_all()


def _ldm_name(name: str) -> str | None:
    """Diffusers module path -> kohya's LDM spelling, for the layers this test renames (docs/facts.md §2.5)."""
    parts = name.split(".")
    if parts[0] == "down_blocks" and parts[2] in ("attentions", "resnets"):
        block = 1 + 3 * int(parts[1]) + int(parts[3])
        part, rest = ("1", parts[4:]) if parts[2] == "attentions" else ("0", parts[4:])
        if part == "0":
            rest = {"conv1": ["in_layers", "2"], "conv2": ["out_layers", "3"], "time_emb_proj": ["emb_layers", "1"],
                    "conv_shortcut": ["skip_connection"]}[rest[0]]  # fmt: skip
        return "_".join(["input_blocks", str(block), part, *rest])
    if parts[0] == "mid_block" and parts[1] == "attentions":
        return "_".join(["middle_block", "1", *parts[3:]])
    if parts[0] == "up_blocks" and parts[2] == "attentions":
        return "_".join(["output_blocks", str(3 * int(parts[1]) + int(parts[3])), "1", *parts[4:]])
    return None


def test_ldm_spelling_merges_like_diffusers_spelling(loaded, tmp_path):
    model = loaded("sd1")
    paths = [kohya_lora(model.reference(), tmp_path / f"{ldm}.safetensors", False, ldm) for ldm in (False, True)]
    assert any(key.startswith("lora_unet_input_blocks_4_1_") for key in safetensors.torch.load_file(str(paths[1])))
    results = []
    for path in paths:
        report = model.merger.apply([LoraUse(read_lora(path))])
        assert report.unmatched == {}
        results.append(model.weights())
        model.merger.remove_all()
    assert all(np.array_equal(results[0][key], results[1][key]) for key in results[0])


def test_weight_zero_is_bit_identical_and_switching_is_exact(loaded, tmp_path):
    model = loaded("sd1")
    path = kohya_lora(model.reference(), tmp_path / "a.safetensors", sdxl=False)
    other = peft_lora(model.reference(), tmp_path / "b.safetensors")
    before = model.weights()
    model.merger.apply([LoraUse(read_lora(path), 0.0, 0.0)])
    assert all(np.array_equal(before[key], array) for key, array in model.weights().items())
    model.merger.apply([LoraUse(read_lora(path))])
    model.merger.apply([LoraUse(read_lora(other), 0.5, 0.5)])  # switch: recomputed from the originals
    switched = model.weights()
    model.merger.remove_all()
    model.merger.apply([LoraUse(read_lora(other), 0.5, 0.5)])
    assert all(np.array_equal(switched[key], array) for key, array in model.weights().items())
    model.merger.remove_all()
    assert all(np.array_equal(before[key], array) for key, array in model.weights().items())


def test_float16_merge_is_the_float32_merge_cast(loaded, tiny_models, tmp_path):
    # a float16 model and the same weights widened to float32: merging in float16 (narrowed by
    # the CPU kernel or mlx_sd.lora.half) gives the float32 merge cast by mlx, bit for bit; undo
    # restores the originals
    model = loaded("sd1")
    path = kohya_lora(model.reference(), tmp_path / "a.safetensors", sdxl=False)
    half = convert_model(tiny_models.diffusers("sd1"), tmp_path / "half", ConvertOptions(dtype="float16")).output
    merged = {}
    for dtype in (mx.float16, mx.float32):
        pipeline = Pipeline.load(half, dtype="float16")
        models = {name: getattr(pipeline, name) for name in ("unet", "text_encoder")}
        for component in models.values():
            component.set_dtype(dtype)
        merger = LoraMerger(models, pipeline.config.family, pipeline.config.unet.layers_per_block, merging_for(pipeline.cpu))
        before = {(c, name): np.array(a) for c, m in models.items() for name, a in tree_flatten(m.parameters())}
        assert merger.apply([LoraUse(read_lora(path), 0.7, -0.9)]).changed > 0
        merged[dtype] = {(c, name): a for c, m in models.items() for name, a in tree_flatten(m.parameters())}
        merger.remove_all()
        restored = {(c, name): np.array(a) for c, m in models.items() for name, a in tree_flatten(m.parameters())}
        assert all(np.array_equal(before[key], array) for key, array in restored.items())
    for key, array in merged[mx.float16].items():
        assert array.dtype == mx.float16 and merged[mx.float32][key].dtype == mx.float32
        assert np.array_equal(np.array(array), np.array(merged[mx.float32][key].astype(mx.float16))), key


def test_merge_holds_one_group_of_float32_temporaries_at_a_time(loaded, tmp_path, monkeypatch):
    # evaluated a layer at a time, the merge's memory peak is the merged weights plus one layer's
    # temporaries, not a float32 delta of every layer at once (a second copy of the model)
    monkeypatch.setattr(merge, "GROUP_BYTES", 1)
    model = loaded("sd1")
    path = kohya_lora(model.reference(), tmp_path / "a.safetensors", sdxl=False)
    lora = read_lora(path)
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    model.merger.apply([LoraUse(lora)])
    peak = mx.get_peak_memory() - before
    changed = list(model.merger._bases.values())  # the originals of the merged weights: same sizes
    model.merger.remove_all()
    merged_bytes, largest = sum(a.nbytes for a in changed), max(a.nbytes for a in changed)
    assert peak <= merged_bytes + 8 * largest, (peak, merged_bytes, largest)


def test_failed_lora_leaves_weights_untouched(loaded, tmp_path):
    model = loaded("sd1")
    good = kohya_lora(model.reference(), tmp_path / "good.safetensors", sdxl=False)
    state = safetensors.torch.load_file(str(good))
    key = next(k for k in state if k.endswith("attn2_to_k.lora_down.weight"))
    state[key] = torch.zeros(RANK, 7)  # a layer of another width: fails after other layers were computed
    bad = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(state, str(bad))
    model.merger.apply([LoraUse(read_lora(good), 0.5, 0.5)])
    merged = model.weights()
    with pytest.raises(LoraError, match="changes a layer of shape"):
        model.merger.apply([LoraUse(read_lora(bad))])
    assert all(np.array_equal(merged[key], array) for key, array in model.weights().items())
    model.merger.remove_all()


def test_a_switch_reuses_the_previous_sets_memory_and_a_failed_evaluation_leaves_no_lora(loaded, tmp_path, monkeypatch):
    # the previous set is undone before the new one is evaluated: its buffers are freed first, so
    # the new weights take their memory (the active memory never holds two merged sets)
    model = loaded("sd1")
    path = kohya_lora(model.reference(), tmp_path / "a.safetensors", sdxl=False)
    before = model.weights()
    model.merger.apply([LoraUse(read_lora(path), 0.5, 0.5)])
    mx.reset_peak_memory()
    active = mx.get_active_memory()
    model.merger.apply([LoraUse(read_lora(path), -0.5, -0.5)])
    merged_bytes = sum(array.nbytes for array in model.merger._bases.values())
    assert mx.get_peak_memory() - active < merged_bytes, (mx.get_peak_memory() - active, merged_bytes)

    def out_of_memory(arrays):
        raise RuntimeError("[malloc] Unable to allocate 1048576 bytes.")

    monkeypatch.setattr(merge, "_evaluate_in_groups", out_of_memory)
    with pytest.raises(LoraError, match=r"Unable to allocate 1048576 bytes\.\); no LoRA is applied now") as caught:
        model.merger.apply([LoraUse(read_lora(path))])
    assert "\n" not in str(caught.value) and not model.merger.any_merged()
    assert all(np.array_equal(before[key], array) for key, array in model.weights().items())


def test_other_family_is_refused_naming_both(loaded, tmp_path):
    sd1, sdxl = loaded("sd1"), loaded("sdxl")
    path = kohya_lora(sdxl.reference(), tmp_path / "xl.safetensors", sdxl=True)
    with pytest.raises(LoraError, match=r"xl is a LoRA for SDXL; the loaded model is SD1$"):
        sd1.merger.apply([LoraUse(read_lora(path))])
