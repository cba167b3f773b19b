"""LoHa and LoKr deltas against the lycoris-lora package's own weight computation, and the file errors.

Works on a small stand-in model (the merge walks parameter trees, whatever the module classes), in our
layout: linear [out, in], conv [out, kH, kW, in]."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import safetensors.torch
import torch
from lycoris.functional import loha, lokr

from mlx_sd.cpu import kernels
from mlx_sd.cpu.lora_merge import CpuMerging
from mlx_sd.cpu.options import CpuOptions
from mlx_sd.lora import LoraError, LoraMerger, LoraUse, read_lora
from mlx_sd.lora.merge import Merging


class CachingConv(nn.Conv2d):
    """Stands for a CPU substitute that caches a transformed filter: it must hear of every change."""

    calls = 0

    def weights_changed(self) -> None:
        self.calls += 1


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(12, 8, bias=False)
        self.conv1 = CachingConv(6, 8, kernel_size=3, padding=1)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = [Block()]


@pytest.fixture(params=["plain", "cpu kernel"])
def merging(request) -> Merging:
    """Each merge twice: as mlx ops, and as the CPU path merges (mlx_sd.cpu.lora_merge)."""
    if request.param == "plain":
        return Merging()
    if not kernels.available():
        pytest.skip(f"CPU kernels: {kernels.status().reason}")
    return CpuMerging(CpuOptions(kernels=True, threads=2))


def _model(merging: Merging) -> tuple[Tiny, LoraMerger]:
    mx.random.seed(0)
    model = Tiny()
    mx.eval(model.parameters())
    return model, LoraMerger({"unet": model}, "sd1", layers_per_block=2, merging=merging)


def _torch_weight(array: mx.array) -> torch.Tensor:
    values = np.array(array)
    return torch.from_numpy(values.transpose(0, 3, 1, 2).copy() if values.ndim == 4 else values)


def _ours(array: torch.Tensor) -> np.ndarray:
    values = array.detach().numpy()
    return values.transpose(0, 2, 3, 1) if values.ndim == 4 else values


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape) * 0.2


def _check(tmp_path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], merging: Merging) -> None:
    """Merging `state` at each weight adds weight * expected delta to each named layer."""
    path = tmp_path / "lyco.safetensors"
    safetensors.torch.save_file(state, str(path))
    for weight in (0.5, 1.0, -1.0):
        model, merger = _model(merging)
        before = {name: np.array(model.blocks[0][name].weight) for name in expected}
        merger.apply([LoraUse(read_lora(path), weight, weight)])
        for name, delta in expected.items():
            want = before[name] + weight * _ours(delta)
            assert np.abs(np.array(model.blocks[0][name].weight) - want).max() <= 1e-5
        assert model.blocks[0].conv1.calls == 1  # told once that its weights changed
        merger.remove_all()
        assert model.blocks[0].conv1.calls == 2


@pytest.mark.parametrize("tucker", [False, True])
def test_loha_equals_lycoris(tmp_path, tucker, merging):
    torch.manual_seed(1)
    rank, alpha = 4, 2.0
    state, expected = {}, {}
    w1a, w1b, w2a, w2b = _randn(8, rank), _randn(rank, 12), _randn(8, rank), _randn(rank, 12)
    state.update({"lora_unet_blocks_0_to_q.hada_w1_a": w1a, "lora_unet_blocks_0_to_q.hada_w1_b": w1b,
                  "lora_unet_blocks_0_to_q.hada_w2_a": w2a, "lora_unet_blocks_0_to_q.hada_w2_b": w2b,
                  "lora_unet_blocks_0_to_q.alpha": torch.tensor(alpha)})  # fmt: skip
    expected["to_q"] = loha.diff_weight(w1b, w1a, w2b, w2a, None, None, gamma=alpha / rank)
    if tucker:  # lycoris' Tucker layout: w_a [rank, out], w_b [rank, in], t [rank, rank, k, k]
        c = [_randn(rank, 8), _randn(rank, 6), _randn(rank, rank, 3, 3), _randn(rank, 8), _randn(rank, 6), _randn(rank, rank, 3, 3)]
        names = ("hada_w1_a", "hada_w1_b", "hada_t1", "hada_w2_a", "hada_w2_b", "hada_t2")
        expected["conv1"] = loha.diff_weight(c[1], c[0], c[4], c[3], c[2], c[5], gamma=alpha / rank)
    else:
        c = [_randn(8, rank), _randn(rank, 6, 3, 3), _randn(8, rank), _randn(rank, 6, 3, 3)]
        names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        expected["conv1"] = loha.diff_weight(c[1], c[0], c[3], c[2], None, None, gamma=alpha / rank)
    state.update({f"lora_unet_blocks_0_conv1.{n}": t for n, t in zip(names, c)})
    state["lora_unet_blocks_0_conv1.alpha"] = torch.tensor(alpha)
    _check(tmp_path, state, expected, merging)


@pytest.mark.parametrize("variant", ["full", "w1_decomposed", "w2_decomposed", "w2_tucker"])
def test_lokr_equals_lycoris(tmp_path, variant, merging):
    torch.manual_seed(2)
    rank, alpha = 2, 3.0
    state = {"lora_unet_blocks_0_to_q.alpha": torch.tensor(alpha), "lora_unet_blocks_0_conv1.alpha": torch.tensor(alpha)}
    # to_q [8, 12] = kron([2, 3], [4, 4]); conv1 [8, 6, 3, 3] = kron([2, 2], [4, 3, 3, 3])
    q = {"w1": _randn(2, 3), "w2": _randn(4, 4)}
    conv = {"w1": _randn(2, 2), "w2": _randn(4, 3, 3, 3)}
    if variant == "w1_decomposed":
        q = {"w1_a": _randn(2, rank), "w1_b": _randn(rank, 3), "w2": q["w2"]}
        conv = {"w1_a": _randn(2, rank), "w1_b": _randn(rank, 2), "w2": conv["w2"]}
    elif variant == "w2_decomposed":
        q = {"w1": q["w1"], "w2_a": _randn(4, rank), "w2_b": _randn(rank, 4)}
        conv = {"w1": conv["w1"], "w2_a": _randn(4, rank), "w2_b": _randn(rank, 3, 3, 3)}
    elif variant == "w2_tucker":
        conv = {"w1": conv["w1"], "w2_a": _randn(rank, 4), "w2_b": _randn(rank, 3), "t2": _randn(rank, rank, 3, 3)}
    expected = {}
    for layer, parts in (("to_q", q), ("conv1", conv)):
        state.update({f"lora_unet_blocks_0_{layer}.lokr_{name}": t for name, t in parts.items()})
        args = [parts.get(n) for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")]
        if "t2" in parts:  # functional.lokr takes the rank from w2_a's second axis, the output width in the
            # Tucker layout; LyCORIS' LoKr module (and A1111) scale by alpha / lora_dim, as here
            expected[layer] = lokr.kron_weight(*args, scale=alpha / rank)
        else:  # functional.lokr's gamma is alpha: it divides by the rank only when a side is decomposed
            expected[layer] = lokr.diff_weight(*args, gamma=alpha)
    _check(tmp_path, state, expected, merging)


def test_full_diff_and_bias(tmp_path, merging):
    diff, diff_b = _randn(8, 6, 3, 3), _randn(8)
    path = tmp_path / "full.safetensors"
    safetensors.torch.save_file({"lora_unet_blocks_0_conv1.diff": diff, "lora_unet_blocks_0_conv1.diff_b": diff_b}, str(path))
    model, merger = _model(merging)
    weight, bias = np.array(model.blocks[0].conv1.weight), np.array(model.blocks[0].conv1.bias)
    merger.apply([LoraUse(read_lora(path), 1.0, 0.5)])
    assert np.abs(np.array(model.blocks[0].conv1.weight) - (weight + 0.5 * _ours(diff))).max() <= 1e-6
    assert np.abs(np.array(model.blocks[0].conv1.bias) - (bias + 0.5 * diff_b.numpy())).max() <= 1e-6
    merger.remove_all()
    assert np.array_equal(np.array(model.blocks[0].conv1.bias), bias)


def test_half_precision_storage_keeps_its_dtype(tmp_path, merging):
    model, merger = _model(merging)
    model.blocks[0].to_q.weight = model.blocks[0].to_q.weight.astype(mx.float16)
    base = model.blocks[0].to_q.weight
    path = tmp_path / "lora.safetensors"
    safetensors.torch.save_file({"lora_unet_blocks_0_to_q.lora_down.weight": _randn(2, 12),
                                 "lora_unet_blocks_0_to_q.lora_up.weight": _randn(8, 2)}, str(path))  # fmt: skip
    merger.apply([LoraUse(read_lora(path))])
    assert model.blocks[0].to_q.weight.dtype == mx.float16
    merger.remove_all()
    assert model.blocks[0].to_q.weight is base  # the original array itself: exact


def test_unmatched_keys_counted_and_nothing_matched_is_an_error(tmp_path, merging):
    path = tmp_path / "odd.safetensors"
    tensors = {"lora_unet_blocks_0_to_q.lora_down.weight": _randn(2, 12), "lora_unet_blocks_0_to_q.lora_up.weight": _randn(8, 2),
               "lora_unet_nowhere.lora_down.weight": _randn(2, 3), "lora_unet_nowhere.lora_up.weight": _randn(3, 2)}  # fmt: skip
    safetensors.torch.save_file(tensors, str(path))
    model, merger = _model(merging)
    report = merger.apply([LoraUse(read_lora(path))])
    assert report.warnings() == ["odd: 1 keys match no layer of this model (e.g. lora_unet_nowhere)"]
    safetensors.torch.save_file({k: v for k, v in tensors.items() if "nowhere" in k}, str(path))
    with pytest.raises(LoraError, match=r"^odd matches no layer of this model \(e.g. lora_unet_nowhere\)$"):
        merger.apply([LoraUse(read_lora(path))])


def test_bad_files_are_one_line_each(tmp_path):
    good = tmp_path / "good.safetensors"
    safetensors.torch.save_file({"lora_unet_a.lora_down.weight": _randn(2, 3)}, str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-5])
    checkpoint = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"model.diffusion_model.out.2.weight": _randn(4, 4)}, str(checkpoint))
    pickle = tmp_path / "old.pt"
    torch.save({"lora_unet_a.lora_down.weight": _randn(2, 3)}, pickle)
    cases = [
        (truncated, "truncated.safetensors cannot be read as a safetensors file"),
        (checkpoint, "model.safetensors is a full model checkpoint"),
        (pickle, "old.pt is a pickle checkpoint .* --allow-pickle"),
        (tmp_path / "missing.safetensors", "does not exist"),
    ]
    for path, message in cases:
        with pytest.raises(LoraError, match=message) as error:
            read_lora(path)
        assert "\n" not in str(error.value)
    assert "lora_unet_a" in read_lora(pickle, allow_pickle=True).modules


@pytest.mark.parametrize("wd_on_out", [False, True])
def test_dora_equals_lycoris_weight_decompose(tmp_path, wd_on_out, merging):
    """At weight 1 LyCORIS' weight_decompose; at other weights A1111's blend W + w * (DoRA(W + dW) - W),
    which leaves weight 0 a no-op (LyCORIS' own merge keeps dW whole at 0)."""
    from lycoris.functional.general import weight_decompose

    torch.manual_seed(4)
    model, _ = _model(merging)
    state, expected = {}, {}
    for name, shape in (("to_q", (8, 12)), ("conv1", (8, 6, 3, 3))):
        base = _torch_weight(model.blocks[0][name].weight)
        down, up = _randn(2, *shape[1:]), _randn(shape[0], 2, *([1] * (len(shape) - 2)))
        delta = (up.reshape(shape[0], 2) @ down.reshape(2, -1)).reshape(shape)
        scale_shape = (shape[0], *[1] * (len(shape) - 1)) if wd_on_out else (1, shape[1], *[1] * (len(shape) - 2))
        dora_scale = torch.rand(*scale_shape) + 0.5
        prefix = f"lora_unet_blocks_0_{name}"
        state.update({f"{prefix}.lora_down.weight": down, f"{prefix}.lora_up.weight": up, f"{prefix}.dora_scale": dora_scale})
        expected[name] = (base, weight_decompose(base + delta, dora_scale, 1, wd_on_out))
    path = tmp_path / "dora.safetensors"
    safetensors.torch.save_file(state, str(path))
    for weight in (1.0, 0.5):
        model, merger = _model(merging)
        merger.apply([LoraUse(read_lora(path), weight, weight)])
        for name, (base, decomposed) in expected.items():
            want = _ours(base + weight * (decomposed - base))
            assert np.abs(np.array(model.blocks[0][name].weight) - want).max() <= 1e-5


@pytest.mark.parametrize(
    "keys, families",
    [
        ({"lora_unet_x_attn2_to_k.lora_down.weight": (4, 768)}, {"sd1"}),
        ({"unet.x.attn2.to_k.lora_A.weight": (4, 1024)}, {"sd2"}),
        ({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048)}, {"sdxl"}),
        ({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 1280)}, {"sdxl"}),
        ({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 768)}, {"sd1", "sd2"}),
        ({"lora_unet_x_conv1.lora_down.weight": (4, 320)}, set()),
    ],
)
def test_family_from_keys_and_shapes(tmp_path, keys, families):
    path = tmp_path / "f.safetensors"
    safetensors.torch.save_file({key: torch.zeros(shape) for key, shape in keys.items()}, str(path))
    assert read_lora(path).families() == families


def test_several_loras_on_one_layer_add_up(tmp_path, merging):
    # two plain LoRAs (their factors stacked into one product) and a full diff on the same layer
    (down1, up1), (down2, up2), diff = (_randn(2, 12), _randn(8, 2)), (_randn(3, 12), _randn(8, 3)), _randn(8, 12)
    files = {
        "a": {"lora_unet_blocks_0_to_q.lora_down.weight": down1, "lora_unet_blocks_0_to_q.lora_up.weight": up1},
        "b": {"lora_unet_blocks_0_to_q.lora_down.weight": down2, "lora_unet_blocks_0_to_q.lora_up.weight": up2,
              "lora_unet_blocks_0_to_q.alpha": torch.tensor(1.5)},  # alpha / rank: 0.5
        "c": {"lora_unet_blocks_0_to_q.diff": diff},
    }  # fmt: skip
    loras = {}
    for name, tensors in files.items():
        safetensors.torch.save_file(tensors, str(tmp_path / f"{name}.safetensors"))
        loras[name] = read_lora(tmp_path / f"{name}.safetensors")
    model, merger = _model(merging)
    before = np.array(model.blocks[0].to_q.weight)
    merger.apply([LoraUse(loras["a"], 0.5, 0.5), LoraUse(loras["b"], -1.0, -1.0), LoraUse(loras["c"], 2.0, 2.0)])
    want = before + 0.5 * (up1 @ down1).numpy() - 0.5 * (up2 @ down2).numpy() + 2.0 * diff.numpy()
    assert np.abs(np.array(model.blocks[0].to_q.weight) - want).max() <= 1e-5
    merger.remove_all()
    assert np.array_equal(np.array(model.blocks[0].to_q.weight), before)
