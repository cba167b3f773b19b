"""CLIPTextModel against transformers' CLIPTextModel / CLIPTextModelWithProjection on tiny random
towers (hidden 128, 2 heads, 3 layers, full 49408 vocabulary and 77 positions)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from device_paths import PATHS, on_path
from mlx_sd.clip import CLIPTextModel, TextEmbedding
from mlx_sd.config import CLIP_L, CLIP_L_SDXL, OPENCLIP_BIGG, OPENCLIP_H, CLIPTextConfig
from mlx_sd.model_format import check_weights
from reference import models as reference_models
from mlx_sd.tokenizer import CLIPTokenizer

TOL = 1e-4
TINY = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=2)
# Tiny analogues of the four presets: same activation, padding, layer choice and projection.
FAMILIES = {
    "sd1": dataclasses.replace(CLIP_L, **TINY),
    "sd2": dataclasses.replace(OPENCLIP_H, **TINY),
    "sdxl-l": dataclasses.replace(CLIP_L_SDXL, **TINY),
    "sdxl-bigg": dataclasses.replace(OPENCLIP_BIGG, **TINY, projection_dim=128),
}
PROMPTS = [
    "a photo of a cat",
    "(masterpiece:1.2), best quality, 1girl, looking at viewer, detailed background",
    ", ".join(f"ornate element {i}" for i in range(60)),  # truncated to 75 tokens
    "",
]


def hf_model(config: CLIPTextConfig, seed: int = 0) -> torch.nn.Module:
    """A transformers tower with random weights at unit scale (so errors are measured on O(1) values)."""
    model = reference_models.text_encoder(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                param.copy_(base + 0.1 * torch.randn(param.shape, generator=gen))
            elif "embedding" in name:
                param.copy_(torch.randn(param.shape, generator=gen))
            elif name.endswith("weight"):
                param.copy_(torch.randn(param.shape, generator=gen) / param.shape[1] ** 0.5)
            else:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    return model


def ours_from(hf: torch.nn.Module, config: CLIPTextConfig) -> CLIPTextModel:
    """Our model with the transformers weights: the names are the same, only position_ids is a buffer.

    transformers 5's CLIPTextModel (not ...WithProjection) leaves out the `text_model.` prefix that
    checkpoints on the Hub carry and that we keep.
    """
    weights = {}
    for key, value in hf.state_dict().items():
        if not key.endswith("position_ids"):
            key = key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key
            weights[key] = mx.array(value.numpy())
    model = CLIPTextModel(config)
    check_weights(model, weights, "text_encoder")
    model.update(tree_unflatten(list(weights.items())))
    return model


def hf_final_norm(hf: torch.nn.Module) -> torch.nn.Module:
    return getattr(hf, "text_model", hf).final_layer_norm


@functools.lru_cache(maxsize=None)
def token_ids(pad_id: int) -> np.ndarray:
    tokenizer = CLIPTokenizer.bundled(pad_token_id=pad_id)
    rows = [tokenizer(p) for p in PROMPTS]
    rng = np.random.default_rng(1)
    random_row = [49406, *rng.integers(0, 49406, size=40).tolist(), 49407] + [pad_id] * 35
    return np.array(rows + [random_row], dtype=np.int64)


def max_err(ours: mx.array, theirs: torch.Tensor) -> float:
    return float(np.abs(np.array(ours.astype(mx.float32)) - theirs.detach().numpy()).max())


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request):
    config = FAMILIES[request.param]
    hf = hf_model(config, seed=len(request.param))
    return request.param, config, hf, ours_from(hf, config)


@pytest.mark.parametrize("impl", PATHS)
def test_forward_matches_transformers(pair, impl):
    name, config, hf, ours = pair
    ours = on_path(ours, impl)
    ids = token_ids(config.pad_token_id)
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids), output_hidden_states=True)
    out = ours(mx.array(ids, dtype=mx.int32))
    assert len(out.hidden_states) == len(ref.hidden_states) == config.num_hidden_layers + 1
    errors = {f"hidden_states[{i}]": max_err(a, b) for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states))}
    errors["last_hidden_state"] = max_err(out.last_hidden_state, ref.last_hidden_state)
    if config.projection_dim:
        errors["text_embeds"] = max_err(out.text_embeds, ref.text_embeds)
        pooled = hf_final_norm(hf)(ref.hidden_states[-1])[range(len(ids)), (ids == 49407).argmax(-1)]
        errors["pooled_output"] = max_err(out.pooled_output, pooled)
    else:
        assert out.text_embeds is None
        errors["pooled_output"] = max_err(out.pooled_output, ref.pooler_output)
    print(f"{name} {impl}: max abs errors", {k: f"{v:.2e}" for k, v in errors.items()})
    assert max(errors.values()) < TOL, errors
    # unit-scale check: the compared values are O(1), so the tolerance is meaningful
    assert 0.5 < float(ref.last_hidden_state.abs().mean()) < 5


def test_cpu_paths_agree_with_the_plain_model(pair):
    name, config, hf, ours = pair
    ids = mx.array(token_ids(config.pad_token_id), dtype=mx.int32)
    outputs = {path: on_path(ours, path)(ids).hidden_states for path in PATHS}
    for path in PATHS[1:]:
        for a, b in zip(outputs["plain"], outputs[path]):
            assert float(mx.abs(a - b).max()) < 1e-5, path


@pytest.mark.parametrize("clip_skip", [1, 2, 3])
def test_encode_selects_the_family_layer(pair, clip_skip):
    name, config, hf, ours = pair
    ids = token_ids(config.pad_token_id)
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids), output_hidden_states=True)
        # docs/facts.md §1.4: SD1/SD2 take a layer then the final LayerNorm; SDXL takes hidden_states[-2] raw.
        # clip_skip k moves the choice k-1 layers earlier (SD: diffusers clip_skip=k-1 uses [-k]).
        if name in ("sd1", "sd2"):
            expected = hf_final_norm(hf)(ref.hidden_states[-clip_skip])
        else:
            expected = ref.hidden_states[-(clip_skip + 1)]
    embedding = ours.encode(mx.array(ids, dtype=mx.int32), clip_skip=clip_skip)
    assert isinstance(embedding, TextEmbedding)
    assert embedding.hidden.shape == (len(ids), 77, config.hidden_size)
    assert max_err(embedding.hidden, expected) < TOL
    if name == "sdxl-bigg":
        assert max_err(embedding.pooled, ref.text_embeds) < TOL  # always from the final layer
    else:
        assert embedding.pooled is None


def test_encode_clip_skip_range(pair):
    name, config, hf, ours = pair
    ids = mx.array(token_ids(config.pad_token_id), dtype=mx.int32)
    deepest = 4 if config.hidden_layer == -1 else 3  # down to the embeddings output of 3 layers
    embedding = ours.encode(ids, clip_skip=deepest)
    np.testing.assert_allclose(np.array(embedding.hidden), np.array(
        ours.text_model.final_layer_norm(ours(ids).hidden_states[0]) if config.final_norm else ours(ids).hidden_states[0]
    ), atol=1e-6)
    for bad in (0, deepest + 1):
        with pytest.raises(ValueError, match=f"clip_skip must be from 1 to {deepest}.*got {bad}"):
            ours.encode(ids, clip_skip=bad)


def test_input_checks():
    model = CLIPTextModel(FAMILIES["sd1"])
    with pytest.raises(ValueError, match=r"shape \(batch, 1..77\), got \(77,\)"):
        model(mx.zeros((77,), dtype=mx.int32))
    with pytest.raises(ValueError, match=r"got \(1, 78\)"):
        model(mx.zeros((1, 78), dtype=mx.int32))
    with pytest.raises(ValueError, match="integer token ids, got dtype mlx.core.float32"):
        model(mx.zeros((1, 77)))
    with pytest.raises(ValueError, match="hidden_act: 'relu' is not one of quick_gelu, gelu"):  # mlx_sd.config validates it
        CLIPTextModel(dataclasses.replace(FAMILIES["sd1"], hidden_act="relu"))


def test_float16_shapes_and_dtypes(pair):
    name, config, hf, ours = pair
    ids = mx.array(token_ids(config.pad_token_id), dtype=mx.int32)
    reference = ours(ids)
    half = ours_from(hf, config)
    half.set_dtype(mx.float16)
    out = half(ids)
    batch = ids.shape[0]
    assert all(h.shape == (batch, 77, 128) and h.dtype == mx.float16 for h in out.hidden_states)
    assert out.last_hidden_state.dtype == mx.float16 and out.pooled_output.shape == (batch, 128)
    embedding = half.encode(ids, clip_skip=2)
    assert embedding.hidden.dtype == mx.float16 and embedding.hidden.shape == (batch, 77, 128)
    if config.projection_dim:
        assert out.text_embeds.dtype == mx.float16 and embedding.pooled.shape == (batch, 128)
    # half precision stays close to float32 on unit-scale values
    diff = mx.abs(out.last_hidden_state.astype(mx.float32) - reference.last_hidden_state)
    assert float(diff.max()) < 0.1


@pytest.mark.parametrize(
    "config, count",
    [(CLIP_L, 123_060_480), (OPENCLIP_H, 340_387_840), (OPENCLIP_BIGG, 694_659_840)],
    ids=["clip-l", "openclip-h-23", "bigg"],
)
def test_full_size_parameter_counts_are_lazy(config, count):
    mx.eval(mx.zeros(1))
    before = mx.get_active_memory()
    model = CLIPTextModel(config)
    assert sum(p.size for _, p in tree_flatten(model.parameters())) == count
    # building must not evaluate the parameters (bigG alone would take 2.8 GB in float32)
    assert mx.get_active_memory() - before < 16 * 2**20


def test_sdxl_presets_share_tokenizer_ids_but_not_padding():
    assert (CLIP_L.pad_token_id, CLIP_L_SDXL.pad_token_id) == (49407, 49407)
    assert (OPENCLIP_H.pad_token_id, OPENCLIP_BIGG.pad_token_id) == (0, 0)
    assert (CLIP_L.hidden_layer, CLIP_L.final_norm, OPENCLIP_H.hidden_layer, OPENCLIP_H.final_norm) == (-1, True, -1, True)
    assert (CLIP_L_SDXL.hidden_layer, CLIP_L_SDXL.final_norm) == (-2, False)
    assert (OPENCLIP_BIGG.hidden_layer, OPENCLIP_BIGG.final_norm, OPENCLIP_BIGG.projection_dim) == (-2, False, 1280)
    assert OPENCLIP_H.num_hidden_layers == 23 and OPENCLIP_H.projection_dim is None
