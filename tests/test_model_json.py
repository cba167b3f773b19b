"""model.json is checked field by field: a hand-edited or damaged file is one ModelFolderError naming the
file and the field, never a traceback, LAPACK noise or a blank image; the presets and our tiny models pass."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
from model_folders import CONFIGS

from mlx_sd.config import PRESETS, ConfigError, ModelConfig, preset
from mlx_sd.model_format import MODEL_JSON, ModelFolderError, read_config


def written(tmp_path: Path, data: object) -> Path:
    (tmp_path / MODEL_JSON).write_text(json.dumps(data), encoding="utf-8")
    return tmp_path


def good() -> dict:
    return CONFIGS["sdxl"].to_dict()


def edited(path: str, value: object) -> dict:
    data = good()
    *parents, last = path.split(".")
    target = data
    for key in parents:
        target = target[key]
    target[last] = value
    return data


@pytest.mark.parametrize(
    "data, message",
    [
        ([good()], "expected a JSON object of model fields, found \\["),
        (edited("unet.attention_head_dim", [1, 0, 2]), r"unet.attention_head_dim\[1\]: 0 is outside 1..16384"),
        (edited("unet.attention_head_dim", [1, 3, 2]), r"unet.attention_head_dim: 3 heads do not divide block_out_channels\[1\] = 128"),
        (edited("unet.norm_num_groups", 0), "unet.norm_num_groups: 0 is outside"),
        (edited("unet.norm_num_groups", 48), r"unet.norm_num_groups: 48 groups do not divide block_out_channels\[0\] = 64"),
        (edited("vae.norm_num_groups", 0), "vae.norm_num_groups: 0 is outside"),
        (edited("vae.scaling_factor", float("nan")), "vae.scaling_factor: expected a finite number, found nan"),
        (edited("vae.scaling_factor", -0.13), r"vae.scaling_factor: -0.13 is outside \(0.0, 100.0\]"),
        (edited("noise_schedule.beta_start", -0.001), "noise_schedule.beta_start: -0.001 is outside"),
        (edited("noise_schedule.beta_end", 0.0001), "noise_schedule.beta_end: 0.0001 is below beta_start"),
        (edited("unet.freq_shift", "0"), "unet.freq_shift: expected an integer, found '0'"),
        (edited("default_size", "1024"), "default_size: expected an integer, found '1024'"),
        (edited("text_encoder_2.num_hidden_layers", 100_000), "text_encoder_2.num_hidden_layers: 100000 is outside 1..128"),
        (edited("text_encoder.num_attention_heads", 3), "text_encoder.num_attention_heads: 3 heads do not divide"),
        (edited("text_encoder.pad_token_id", 49408), "text_encoder.pad_token_id: 49408 is outside 0..49407"),
        (edited("text_encoder.hidden_act", "relu"), "text_encoder.hidden_act: 'relu' is not one of quick_gelu, gelu"),
        (edited("text_encoder", [1, 2]), "text_encoder: expected an object of CLIPTextConfig fields"),
        (edited("unet.use_linear_projection", "yes"), "unet.use_linear_projection: expected true or false"),
        (edited("unet.block_out_channels", [64, 128]), r"unet.block_out_channels: expected 3 values \(one per level\), found 2"),
        (edited("unet.down_block_types", ["DownBlock2D", "Nope", "DownBlock2D"]), r"unet.down_block_types\[1\]: 'Nope'"),
        (edited("unet.cross_attention_dim", 512), "unet.cross_attention_dim: 512 does not match the text encoders' width 256"),
        (edited("unet.in_channels", 5), "unet.in_channels/out_channels: 5/4 do not fit the VAE's 4 latent channels"),
        (edited("unet.projection_class_embeddings_input_dim", 100), "unet.projection_class_embeddings_input_dim: 100"),
        (edited("family", "sd1"), "a sd1 model has text_encoder, found text_encoder and text_encoder_2"),
        (edited("dtype", "float8"), "dtype: 'float8' is not one of float32, float16, bfloat16"),
        (edited("source.sha256", 12), "source.sha256: expected 64 lower-case hex digits"),
        (edited("format_version", "1"), "format_version '1'"),
        ({k: v for k, v in good().items() if k != "unet"}, "unet: missing"),
    ],
)
def test_a_damaged_model_json_names_file_and_field(tmp_path, data, message):
    folder = written(tmp_path, data)
    with pytest.raises(ModelFolderError, match=f"{MODEL_JSON} is damaged: .*{message}"):
        read_config(folder)


@pytest.mark.parametrize("text", ["", "{", "\ud800", "[" * 200_000, '{"a": ' * 100_000])
def test_model_json_that_is_not_json(tmp_path, text):
    (tmp_path / MODEL_JSON).write_text(text, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(ModelFolderError, match=f"{MODEL_JSON} is damaged: it is not JSON"):
        read_config(tmp_path)


@pytest.mark.parametrize("name", PRESETS)
def test_the_presets_and_our_tiny_models_pass_and_round_trip(name):
    for config in (preset(name), *CONFIGS.values()):
        assert ModelConfig.from_dict(copy.deepcopy(config.to_dict())) == config


def test_configs_check_themselves_when_made_or_edited_with_replace():
    import dataclasses

    with pytest.raises(ConfigError, match="norm_num_groups: 0 is outside"):
        dataclasses.replace(preset("sd15").unet, norm_num_groups=0)


def test_a_huge_model_json_is_refused_in_bounded_time(tmp_path):
    data = good()
    data["text_encoder"]["num_hidden_layers"] = 10**9
    data["unet"]["block_out_channels"] = [64] * 10**6
    started = time.perf_counter()
    with pytest.raises(ModelFolderError):
        read_config(written(tmp_path, data))
    assert time.perf_counter() - started < 2.0
