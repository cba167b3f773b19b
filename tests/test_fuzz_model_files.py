"""Property tests over what mlx-sd reads from files it did not write: safetensors headers, the key sets
and shapes of single-file checkpoints, and model.json. Thousands of generated inputs; each may only
raise the documented error type (HeaderError, ConversionError, ConfigError / ModelFolderError), and
each is answered within a time budget."""

from __future__ import annotations

import copy
import json
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_folders import CONFIGS

from convert import infer_config
from convert.detect import REFINER_BIGG, SD1_CLIP, SD2_OPENCLIP, SDXL_BIGG, SDXL_CLIP, detect_layout
from convert.errors import ConversionError
from mlx_sd.config import ConfigError, ModelConfig
from mlx_sd.model_format import MODEL_JSON, ModelFolderError, read_config
from mlx_sd.dtypes import SAFETENSORS_DTYPES
from mlx_sd.safetensors_header import HeaderError, parse_header, read_header

BUDGET = 0.5  # seconds per input: every reader is linear, these inputs are small
def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def timed(call, *errors):
    """Run `call`; only `errors` may escape it, and within the budget. Returns its result or None."""
    started = time.perf_counter()
    try:
        return call()
    except errors:
        return None
    finally:
        assert time.perf_counter() - started < BUDGET


# ---------------------------------------------------------------------------------------------
# safetensors headers


@st.composite
def tensor_entries(draw):
    """Entries near the valid ones: known and unknown dtypes, odd shapes, offsets off by a little."""
    dtype = draw(st.sampled_from([*SAFETENSORS_DTYPES, "F8_E4M3", "f32", "", 7]))
    shape = draw(st.lists(st.integers(-2, 5) | st.sampled_from([2**31, 2**63, True, 1.0, "2"]), max_size=4))
    size = math.prod(d for d in shape if isinstance(d, int)) * (SAFETENSORS_DTYPES[dtype][1] if dtype in SAFETENSORS_DTYPES else 1)
    begin = draw(st.integers(0, 64))
    end = begin + draw(st.sampled_from([size, size, size + 1, size - 1, 0]))
    offsets = draw(st.sampled_from([[begin, end], [begin, end], [end, begin], [begin], [str(begin), end], None]))
    entry = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
    return draw(st.sampled_from([entry, entry, entry, {k: v for k, v in entry.items() if k != "shape"}]))


headers = st.dictionaries(st.text(max_size=6), tensor_entries() | json_values, max_size=6) | json_values


@fuzz(700)
@given(header=headers, extra=st.integers(-8, 64), metadata=st.none() | json_values)
def test_header_reader_raises_only_header_errors(header, extra, metadata):
    if isinstance(header, dict) and metadata is not None:
        header = {**header, "__metadata__": metadata}
    text = json.dumps(header).encode()
    result = timed(lambda: parse_header(text, max(extra, 0)), HeaderError)
    if result is not None:  # accepted: the tensors tile the data section exactly
        tensors, _ = result
        ranges = sorted((t.begin, t.end) for t in tensors.values())
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert (ranges[-1][1] if ranges else 0) == max(extra, 0)


@fuzz(200)
@given(data=st.binary(max_size=300))
def test_header_reader_on_arbitrary_files(tmp_path, data):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(data)
    timed(lambda: read_header(path), HeaderError)


@pytest.mark.parametrize("depth", [10, 1000, 100_000, 2_000_000])
def test_deep_nesting_is_refused_in_linear_time(depth):
    text = b'{"a": ' + b"[" * depth + b"]" * depth + b"}"
    started = time.perf_counter()
    with pytest.raises(HeaderError):
        parse_header(text, 0)
    assert time.perf_counter() - started < 2.0


# ---------------------------------------------------------------------------------------------
# single-file detection and the configs read from a checkpoint's shapes

PREFIXES = [
    "model.diffusion_model.", "model_ema.diffusion_modelinput_blocks", "first_stage_model.", SD1_CLIP,
    *SD2_OPENCLIP, SDXL_CLIP, SDXL_BIGG, REFINER_BIGG, "lora_unet_", "", "emb_params",
]
SUFFIXES = [
    "input_blocks.0.0.weight", "label_emb.0.0.weight", "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
    "encoder.conv_in.weight", "text_model.encoder.layers.0.mlp.fc1.weight", "lora_down.weight", ".alpha",
    "transformer.resblocks.0.attn.in_proj_weight", "x",
]
shapes = st.lists(st.integers(0, 2100), max_size=5).map(tuple)
key_sets = st.dictionaries(
    st.builds(lambda p, s: p + s, st.sampled_from(PREFIXES), st.sampled_from(SUFFIXES) | st.text(max_size=10)),
    shapes, max_size=12,
)


@fuzz(500)
@given(keys=key_sets, family=st.none() | st.sampled_from(["sd1", "sd2", "sdxl", "sdxl-refiner", "sd3"]))
def test_detection_raises_only_conversion_errors(keys, family):
    timed(lambda: detect_layout("fuzz.safetensors", keys, family), ConversionError)


DIFFUSERS_KEYS = [
    "conv_in.weight", "conv_out.weight", "down_blocks.0.resnets.0.conv1.weight", "down_blocks.1.resnets.0.conv1.weight",
    "down_blocks.0.resnets.1.conv1.weight", "down_blocks.0.attentions.0.proj_in.weight",
    "down_blocks.1.attentions.0.proj_in.weight", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight", "add_embedding.linear_1.weight",
    "encoder.conv_in.weight", "decoder.conv_out.weight", "decoder.conv_in.weight",
    "encoder.down_blocks.0.resnets.0.conv1.weight", "encoder.down_blocks.1.resnets.0.conv1.weight",
    "text_model.embeddings.token_embedding.weight", "text_model.encoder.layers.0.self_attn.q_proj.weight",
    "text_model.encoder.layers.0.mlp.fc1.weight", "text_model.embeddings.position_embedding.weight",
    "text_projection.weight",
]
small_shapes = st.lists(st.sampled_from([0, 1, 3, 4, 8, 32, 64, 77, 128, 320, 2048]), max_size=5).map(tuple)


@fuzz(400)
@given(
    found=st.dictionaries(st.sampled_from(DIFFUSERS_KEYS), small_shapes, max_size=len(DIFFUSERS_KEYS)),
    family=st.sampled_from(["sd1", "sd2", "sdxl", "sdxl-refiner"]),
    which=st.sampled_from(["unet", "vae", "text"]),
)
def test_configs_from_shapes_raise_only_conversion_or_config_errors(found, family, which):
    read = {
        "unet": lambda: infer_config.unet_config(found, family),
        "vae": lambda: infer_config.vae_config(found, family),
        "text": lambda: infer_config.text_config(found, family != "sd1", "text_encoder_2" if family.startswith("sdxl") else "text_encoder", family),
    }[which]
    timed(read, ConversionError, ConfigError)


# ---------------------------------------------------------------------------------------------
# model.json


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


VALID = {name: config.to_dict() for name, config in CONFIGS.items()}
PATHS = {name: [p for p in _paths(json.loads(json.dumps(data))) if p] for name, data in VALID.items()}


@fuzz(700)
@given(data=st.data(), name=st.sampled_from(sorted(VALID)))
def test_model_json_edits_raise_only_config_errors(data, name):
    document = json.loads(json.dumps(VALID[name]))  # lists, as in a file
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(PATHS[name]))
        target = document
        try:
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = data.draw(json_values | st.integers(-5, 5) | st.floats(-1e6, 1e6))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced a parent
    config = timed(lambda: ModelConfig.from_dict(copy.deepcopy(document)), ConfigError)
    if config is not None:  # accepted: then it is self-consistent and writes back the same
        config.validate()
        assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@fuzz(200)
@given(text=st.text(max_size=200) | json_values.map(json.dumps))
def test_read_config_raises_only_model_folder_errors(tmp_path, text):
    (tmp_path / MODEL_JSON).write_text(text, encoding="utf-8", errors="surrogatepass")
    timed(lambda: read_config(tmp_path), ModelFolderError)
