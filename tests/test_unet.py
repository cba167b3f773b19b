"""UNet2DConditionModel: parity with diffusers on tiny random models of every family, both attention
formulations, half precision, full-size parameter counts and names, input validation."""

from __future__ import annotations

import dataclasses
import time


import mlx.core as mx
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel as TorchUNet
from diffusers.models.embeddings import get_timestep_embedding
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mlx_sd.config import ConfigError, PRESETS, UNetConfig, preset
from device_paths import PATHS, on_path
from mlx_sd.model_format import check_weights
from mlx_sd.unet import UNet2DConditionModel, timestep_embedding

# Tiny configs in diffusers' config.json naming. They shrink only what tensor shapes reveal and keep
# the family rules: SD1 8 heads per level, SD2/SDXL head_dim 64, GroupNorm 32, layers_per_block 2,
# addition_time_embed_dim 256. Text contexts are tiny text encoders' widths (128; SDXL 128 + 128).
SD1 = dict(
    block_out_channels=[32, 64, 64, 64], attention_head_dim=8, cross_attention_dim=128,
)
SD2 = dict(
    block_out_channels=[64, 128, 128, 128], attention_head_dim=[1, 2, 2, 2], cross_attention_dim=128,
    use_linear_projection=True,
)
SDXL = dict(
    block_out_channels=[64, 128, 256],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 3], attention_head_dim=[1, 2, 4], cross_attention_dim=256,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=128 + 6 * 256,
)
REFINER = dict(
    block_out_channels=[64, 128, 128, 128],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=2, attention_head_dim=[1, 2, 2, 2], cross_attention_dim=128,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=128 + 5 * 256,
)
FAMILIES = {
    "sd1": SD1,
    "sd1-inpaint": dict(SD1, in_channels=9),
    "sd2": SD2,
    "sd2-v-upcast": dict(SD2, upcast_attention=True),
    "sdxl": SDXL,
    "sdxl-refiner": REFINER,
}
TIME_IDS = {
    6: [[1024, 1024, 0, 0, 1024, 1024], [512, 768, 32, 16, 1024, 1024]],
    5: [[1024, 1024, 0, 0, 6.0], [768, 512, 64, 0, 2.5]],
}
TIMESTEPS = [481.37, 999.0]  # one fractional, one integer
SIZES = [(9, 7), (10, 12)]  # neither divisible by the total downsampling (8 or 4)
TOLERANCE = 1e-4


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """Tiny torch models on 2 shared cores run ~20x faster single-threaded (no spinning workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Unit-scale random weights everywhere, norms included (their defaults would hide a mix-up)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.ndim > 1:
                param.copy_(noise / np.sqrt(param[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)


def to_mlx_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, mx.array]:
    """diffusers state dict -> our weights: same names, 4-D conv weights permuted to [out, kH, kW, in]."""
    return {
        key: mx.array((value.permute(0, 2, 3, 1) if value.ndim == 4 else value).contiguous().numpy())
        for key, value in state_dict.items()
    }


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    """(name, diffusers model, our model with the same weights)."""
    name = request.param
    torch.manual_seed(0)
    reference = TorchUNet(**FAMILIES[name]).eval()
    randomize(reference, seed=1)
    ours = UNet2DConditionModel(UNetConfig.from_dict(FAMILIES[name]))
    weights = to_mlx_weights(reference.state_dict())
    check_weights(ours, weights, "unet")
    ours.update(tree_unflatten(list(weights.items())))
    mx.eval(ours.parameters())
    return name, reference, ours


def make_inputs(config: UNetConfig, size: tuple[int, int], seed: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = {
        "sample": rng.standard_normal((2, *size, config.in_channels), dtype=np.float32),
        "timestep": np.array(TIMESTEPS, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, config.context_dim), dtype=np.float32),
    }
    if config.addition_embed_type == "text_time":
        count = (config.projection_class_embeddings_input_dim - 128) // config.addition_time_embed_dim
        inputs["text_embeds"] = rng.standard_normal((2, 128), dtype=np.float32)
        inputs["time_ids"] = np.array(TIME_IDS[count], dtype=np.float32)
    return inputs


def run_ours(model: UNet2DConditionModel, inputs: dict[str, np.ndarray], dtype=mx.float32) -> mx.array:
    """Activations in `dtype`; timesteps and time ids stay float32 as the pipeline passes them."""
    arrays = {key: mx.array(value) for key, value in inputs.items()}
    for key in ("sample", "encoder_hidden_states", "text_embeds"):
        if key in arrays:
            arrays[key] = arrays[key].astype(dtype)
    out = model(**arrays)
    mx.eval(out)
    return out


def run_reference(model: TorchUNet, inputs: dict[str, np.ndarray]) -> np.ndarray:
    added = None
    if "time_ids" in inputs:
        added = {key: torch.from_numpy(inputs[key]) for key in ("text_embeds", "time_ids")}
    with torch.no_grad():
        out = model(
            torch.from_numpy(inputs["sample"]).permute(0, 3, 1, 2),
            torch.from_numpy(inputs["timestep"]),
            torch.from_numpy(inputs["encoder_hidden_states"]),
            added_cond_kwargs=added,
        ).sample
    return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_parity_with_diffusers(family, size):
    name, reference, ours = family
    inputs = make_inputs(ours.config, size)
    expected = run_reference(reference, inputs)
    start = time.perf_counter()
    got = np.array(run_ours(ours, inputs))
    elapsed = time.perf_counter() - start
    assert got.shape == expected.shape == (2, *size, 4)
    error = np.abs(got - expected).max()
    print(f"\n{name} {size}: max abs error {error:.2e} (output std {expected.std():.2f}), mlx {elapsed:.2f}s")
    assert error < TOLERANCE


@pytest.mark.parametrize("path", PATHS[1:])
def test_cpu_paths_agree_with_the_plain_model(family, path):
    name, _, ours = family
    inputs = make_inputs(ours.config, (8, 8))
    plain = np.array(run_ours(ours, inputs))
    swapped = np.array(run_ours(on_path(ours, path), inputs))
    difference = np.abs(plain - swapped).max()
    print(f"\n{name}: plain vs {path} max abs difference {difference:.2e}")
    assert difference < 1e-5


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision(family, dtype):
    name, _, ours = family
    half = UNet2DConditionModel(ours.config)
    half.update(tree_map(lambda p: p.astype(dtype), ours.parameters()))
    inputs = make_inputs(ours.config, (9, 7))
    got = run_ours(half, inputs, dtype)
    assert got.shape == (2, 9, 7, 4)
    assert got.dtype == dtype
    assert np.isfinite(np.array(got.astype(mx.float32))).all()
    # Half precision still tracks float32: relative RMS difference, bfloat16 has 3 fewer mantissa bits.
    reference = np.array(run_ours(ours, inputs))
    difference = np.array(got.astype(mx.float32)) - reference
    relative = np.sqrt((difference**2).mean() / (reference**2).mean())
    print(f"\n{name} {dtype}: relative RMS difference from float32 {relative:.1e}")
    assert relative < (1e-2 if dtype == mx.float16 else 5e-2)


def test_timestep_embedding_matches_diffusers_and_the_facts():
    steps = mx.array([0.0, 1.5, 481.37, 999.0, 1024.0])
    ours = np.array(timestep_embedding(steps, 320))
    expected = get_timestep_embedding(
        torch.tensor(np.array(steps)), 320, flip_sin_to_cos=True, downscale_freq_shift=0
    )
    assert np.abs(ours - expected.numpy()).max() < 1e-4
    # docs/facts.md §1.3: sinusoid(1024, 256)
    emb = np.array(timestep_embedding(mx.array([1024.0]), 256))[0]
    np.testing.assert_allclose(emb[:3], [0.9874, -0.5376, 0.6834], atol=1e-4)
    np.testing.assert_allclose(emb[128:131], [-0.1585, -0.8432, 0.7300], atol=1e-4)


COUNTS = {
    "sd15": 859_520_964,
    "sd15-inpaint": 859_535_364,
    "sd21-base": 865_910_724,
    "sd21": 865_910_724,
    "sdxl": 2_567_463_684,
    "sdxl-refiner": 2_259_526_660,
}


@pytest.mark.parametrize("name", PRESETS)
def test_full_size_parameter_count_without_allocating(name):
    before = mx.get_active_memory()
    start = time.perf_counter()
    model = UNet2DConditionModel(preset(name).unet)
    count = sum(p.size for _, p in tree_flatten(model.parameters()))
    elapsed = time.perf_counter() - start
    assert count == COUNTS[name]
    assert elapsed < 2.0, f"building took {elapsed:.2f}s: parameters were evaluated"
    assert mx.get_active_memory() - before < 1 << 20


@pytest.mark.parametrize("name", PRESETS)
def test_full_size_names_and_shapes_match_diffusers(name):
    config = preset(name).unet
    with torch.device("meta"):
        reference = TorchUNet(**dataclasses.asdict(config))
    expected = {
        key: tuple(value.permute(0, 2, 3, 1).shape if value.ndim == 4 else value.shape)
        for key, value in reference.state_dict().items()
    }
    ours = {key: tuple(value.shape) for key, value in tree_flatten(UNet2DConditionModel(config).parameters())}
    assert ours == expected


def sdxl_model() -> UNet2DConditionModel:
    return UNet2DConditionModel(UNetConfig.from_dict(SDXL))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(sample=mx.zeros((2, 8, 8, 9))), r"NHWC \(B, h, w, 4\); received shape \(2, 8, 8, 9\)"),
        (dict(timestep=mx.zeros((3,))), r"timestep must have shape \(2,\)"),
        (dict(encoder_hidden_states=mx.zeros((2, 77, 128))), r"\(2, L, 256\); received \(2, 77, 128\)"),
        (dict(time_ids=None), "needs text_embeds and time_ids"),
        (
            dict(time_ids=mx.zeros((2, 5))),
            r"P \+ N \* 256 = 1664 were expected; received \(2, 128\) and \(2, 5\)",
        ),
    ],
)
def test_sdxl_input_errors_say_expected_and_received(change, message):
    inputs = dict(
        sample=mx.zeros((2, 8, 8, 4)),
        timestep=mx.zeros((2,)),
        encoder_hidden_states=mx.zeros((2, 77, 256)),
        text_embeds=mx.zeros((2, 128)),
        time_ids=mx.zeros((2, 6)),
    )
    with pytest.raises(ValueError, match=message):
        sdxl_model()(**{**inputs, **change})


def test_sd1_rejects_text_time_inputs_and_broadcasts_a_scalar_timestep():
    model = UNet2DConditionModel(UNetConfig.from_dict(SD1))
    sample, context = mx.zeros((2, 8, 8, 4)), mx.zeros((2, 77, 128))
    with pytest.raises(ValueError, match="no text_time conditioning"):
        model(sample, mx.array([1.0, 2.0]), context, text_embeds=mx.zeros((2, 128)))
    scalar = model(sample, mx.array(10.0), context)
    batched = model(sample, mx.array([10.0, 10.0]), context)
    assert np.array_equal(np.array(scalar), np.array(batched))


def test_unknown_block_type_is_rejected():
    # refused as the config is built (mlx_sd.config validates every field), before any model
    with pytest.raises(ConfigError, match="SimpleDown"):
        UNetConfig.from_dict(dict(SD1, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["SimpleDown"]))
