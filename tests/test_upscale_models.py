"""The upscaler networks against spandrel (the loader other apps use) on torch: the same random
weights, written in each layout users download, read through convert/upscaler_file.py on our side and
spandrel's loader on theirs; float32 outputs within 1e-4."""

from __future__ import annotations

import re
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from benchmarks.upscale import import_spandrel  # noqa: E402

spandrel = import_spandrel()
from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402

from convert.errors import ConversionError  # noqa: E402
from convert.upscaler_file import detect_upscaler, read_upscaler  # noqa: E402
from mlx_sd.upscalers import CompactConfig, RRDBNetConfig  # noqa: E402

TOLERANCE = 1e-4


def _new_layout(state: dict, kind: str) -> dict:
    """spandrel's (ESRGAN old-architecture) keys renamed to Real-ESRGAN's ("new") or BSRGAN's layout."""
    top = sorted({int(k.split(".")[1]) for k in state if re.fullmatch(r"model\.\d+\.(weight|bias)", k)})
    *ups, hr, last = top[1:]
    trunk = max(int(m.group(1)) for k in state if (m := re.fullmatch(r"model\.1\.sub\.(\d+)\.weight", k)))
    names = {
        "new": ("conv_first", "body.{}.rdb{}.conv{}", "conv_body", "conv_up{}", "conv_hr", "conv_last"),
        "bsrgan": ("conv_first", "RRDB_trunk.{}.RDB{}.conv{}", "trunk_conv", "upconv{}", "HRconv", "conv_last"),
    }[kind]
    first, dense, body, up, hr_name, last_name = names
    layer = {0: first, hr: hr_name, last: last_name} | {n: up.format(i + 1) for i, n in enumerate(ups)}
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(\w+)", key):
            out[dense.format(*m.groups()[:3]) + "." + m.group(4)] = value
        elif m := re.fullmatch(r"model\.1\.sub\.(\d+)\.(\w+)", key):
            assert int(m.group(1)) == trunk
            out[f"{body}.{m.group(2)}"] = value
        else:
            index, name = re.fullmatch(r"model\.(\d+)\.(\w+)", key).groups()
            out[f"{layer[int(index)]}.{name}"] = value
    return out


def _randomise(model: torch.nn.Module, seed: int) -> dict:
    """Random weights of about the scale trained ones have, so the outputs are image-like (about 0 to
    1): convolutions uniform within 1/sqrt(fan-in), small biases, PReLU slopes near their 0.25 start."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                noise = torch.rand(param.shape, generator=generator) * 2 - 1
                if param.ndim == 4:
                    param.copy_(noise / param[0].numel() ** 0.5)
                elif isinstance(module, torch.nn.PReLU):
                    param.copy_(0.25 + noise * 0.05)
                else:
                    param.copy_(noise * 0.05)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _compare(tmp_path: Path, state: dict, image_hw: tuple[int, int], suffix: str, expected_config) -> None:
    path = tmp_path / f"model{suffix}"
    if suffix == ".pth":
        torch.save({"params_ema": state}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    ours, found = read_upscaler(path)
    assert found.config == expected_config
    theirs = spandrel.ModelLoader().load_from_state_dict(state).model.eval()
    image = np.random.default_rng(0).random((1, *image_hw, 3), dtype=np.float32)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(image).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    got = np.array(ours(mx.array(image)))
    assert got.shape == expected.shape
    assert 0.01 < np.abs(expected).mean() < 10  # image-like values, where 1e-4 is a meaningful bound
    assert np.abs(got - expected).max() <= TOLERANCE


RRDB_CASES = {
    # name: (spandrel hyperparameters, our config, file layout)
    "tiny-old-x4": (dict(num_filters=8, num_blocks=2, scale=4), RRDBNetConfig(features=8, blocks=2), "old"),
    "tiny-new-x2plus": (
        dict(in_nc=12, num_filters=8, num_blocks=1, scale=4, shuffle_factor=2),
        RRDBNetConfig(features=8, blocks=1, unshuffle=2), "new",
    ),
    "tiny-bsrgan-x2": (
        dict(num_filters=8, num_blocks=1, scale=2), RRDBNetConfig(features=8, blocks=1, upsamplings=1), "bsrgan",
    ),
    "tiny-old-x1-unshuffle4": (
        dict(in_nc=48, num_filters=8, num_blocks=1, scale=4, shuffle_factor=4),
        RRDBNetConfig(features=8, blocks=1, unshuffle=4), "old",
    ),
}


@pytest.mark.parametrize("case", sorted(RRDB_CASES))
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_tiny_rrdbnet_matches_spandrel(tmp_path, case, suffix):
    hyper, config, layout = RRDB_CASES[case]
    state = _randomise(ESRGAN(**hyper), seed=1)
    if layout != "old":
        state = _new_layout(state, layout)
    _compare(tmp_path, state, (13, 10), suffix, config)  # odd sizes: the unshuffle pads and crops


@pytest.mark.parametrize("convs,scale", [(2, 4), (3, 2)])
def test_tiny_compact_matches_spandrel(tmp_path, convs, scale):
    state = _randomise(Compact(num_feat=8, num_conv=convs, upscale=scale), seed=2)
    _compare(tmp_path, state, (9, 11), ".safetensors", CompactConfig(features=8, convs=convs, scale=scale))


FULL_SIZE = {
    "RealESRGAN_x4plus": (dict(num_blocks=23, scale=4), RRDBNetConfig(), "new"),
    "RealESRGAN_x2plus": (
        dict(in_nc=12, num_blocks=23, scale=4, shuffle_factor=2), RRDBNetConfig(unshuffle=2), "new",
    ),
    "4x-UltraSharp (old ESRGAN keys)": (dict(num_blocks=23, scale=4), RRDBNetConfig(), "old"),
    "RealESRGAN_x4plus_anime_6B": (dict(num_blocks=6, scale=4), RRDBNetConfig(blocks=6), "new"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_rrdbnet_matches_spandrel(tmp_path, name):
    hyper, config, layout = FULL_SIZE[name]
    state = _randomise(ESRGAN(**hyper), seed=3)
    if layout != "old":
        state = _new_layout(state, layout)
    _compare(tmp_path, state, (24, 20), ".pth", config)


@pytest.mark.slow
@pytest.mark.parametrize("name,convs", [("realesr-general-x4v3", 32), ("realesr-animevideov3", 16)])
def test_full_size_compact_matches_spandrel(tmp_path, name, convs):
    state = _randomise(Compact(num_feat=64, num_conv=convs, upscale=4), seed=4)
    _compare(tmp_path, state, (24, 20), ".pth", CompactConfig(convs=convs))


def test_unknown_architecture_is_one_line_naming_what_was_found():
    with pytest.raises(ConversionError) as caught:
        detect_upscaler({"layers.0.residual_group.blocks.0.norm1.weight": (180,)}, "4x-SwinIR.pth")
    message = str(caught.value)
    assert "\n" not in message and "4x-SwinIR.pth" in message and "SwinIR, HAT" in message
    with pytest.raises(ConversionError, match=r"2 tensors \('a.weight', 'b.bias'\)"):
        detect_upscaler({"a.weight": (3, 3), "b.bias": (3,)}, "mystery.safetensors")


def test_pickle_holding_code_is_refused(tmp_path):
    """.pth files are read with the weights-only unpickler: a pickle that would run code is refused."""
    path = tmp_path / "evil.pth"
    torch.save({"params": {"x": torch.zeros(1)}, "hook": print}, path)
    with pytest.raises(ConversionError, match="weights-only"):
        read_upscaler(path)
