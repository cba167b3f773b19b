"""Detection on single files: every family, the layouts real files come in (SGM-packed SD2, CLIP keys
without `text_model.`, EMA copies), v-prediction from the probe / a side-car yaml / SDXL's marker key,
and the flags that override detection."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from convert import ConversionError, ConvertOptions, convert_model
from convert.single_file import plan_single_file
from mlx_sd.model_format import read_config

FAMILY = {"sd1": "sd1", "sd1-inpaint": "sd1", "sd2-v": "sd2", "sdxl": "sdxl", "sdxl-refiner": "sdxl-refiner"}
OPENAI = "quick_gelu"
OPENCLIP = "gelu"


def _edited(tiny_models, kind, path, edit):
    """The kind's single file, passed through `edit(state) -> state`, saved at `path`."""
    state = edit(load_file(str(tiny_models.single_file(kind))))
    save_file(state, str(path))
    return path


def _renamed(old: str, new: str):
    return lambda state: {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}


def _weights(folder, component):
    return mx.load(str(folder / f"{component}.safetensors"))


@pytest.mark.parametrize("kind", list(FAMILY))
def test_family_and_configs_per_kind(tiny_models, kind, tmp_path):
    plan = plan_single_file(tiny_models.single_file(kind), ConvertOptions(), tmp_path)
    config = plan.config
    assert config.family == FAMILY[kind]
    assert config.unet.in_channels == (9 if kind == "sd1-inpaint" else 4)
    acts = {name: c.hidden_act for name, c in config.text_encoders.items()}
    pads = {name: c.pad_token_id for name, c in config.text_encoders.items()}
    expected_acts = {
        "sd1": {"text_encoder": OPENAI},
        "sd2": {"text_encoder": OPENCLIP},
        "sdxl": {"text_encoder": OPENAI, "text_encoder_2": OPENCLIP},
        "sdxl-refiner": {"text_encoder_2": OPENCLIP},
    }[config.family]
    assert acts == expected_acts
    assert pads == {name: (49407 if act == OPENAI else 0) for name, act in expected_acts.items()}
    # heads: 8 per level for SD1, width/64 elsewhere; VAE and SDXL rules
    if config.family == "sd1":
        assert config.unet.attention_head_dim == 8 and not config.unet.use_linear_projection
    else:
        assert config.unet.heads_per_level() == [w // 64 for w in config.unet.block_out_channels]
    assert config.vae.scaling_factor == (0.13025 if config.family.startswith("sdxl") else 0.18215)
    assert config.force_zeros_for_empty_prompt == (config.family == "sdxl")
    assert config.requires_aesthetics_score == (config.family == "sdxl-refiner")
    if config.family == "sd2":
        assert config.text_encoder.num_hidden_layers == 3  # the file's 4th (last) OpenCLIP block is dropped


def test_sgm_packed_sd2_is_not_a_refiner(tiny_models, tmp_path):
    path = _edited(tiny_models, "sd2-v", tmp_path / "packed.safetensors",
                   _renamed("cond_stage_model.model.", "conditioner.embedders.0.model."))
    plan = plan_single_file(path, ConvertOptions(), tmp_path)
    assert plan.config.family == "sd2" and plan.ignored == []


def test_clip_keys_without_text_model_level(tiny_models, tmp_path):
    """Old SD1 files omit `text_model.`; A1111 puts it back, and so do we: same weights as the normal file."""
    path = _edited(tiny_models, "sd1", tmp_path / "old.safetensors",
                   _renamed("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."))
    convert_model(path, tmp_path / "old", ConvertOptions(dtype="float32"))
    convert_model(tiny_models.single_file("sd1"), tmp_path / "new", ConvertOptions(dtype="float32"))
    old, new = _weights(tmp_path / "old", "text_encoder"), _weights(tmp_path / "new", "text_encoder")
    assert old.keys() == new.keys()
    assert all(mx.array_equal(old[k], new[k]).item() for k in new)


def test_ema_weights(tiny_models, tmp_path):
    """The EMA file: pipeline weights under model_ema.*, perturbed "training" weights as the regular ones."""
    both = tiny_models.single_file("sd1", ema=True)
    drop_regular = lambda s: {  # noqa: E731
        k: v for k, v in load_file(str(both)).items() if not k.startswith("model.diffusion_model.")
    }
    only = _edited(tiny_models, "sd1", tmp_path / "ema-only.safetensors", drop_regular)
    reports = {
        "plain": convert_model(tiny_models.single_file("sd1"), tmp_path / "plain", ConvertOptions(dtype="float32")),
        "ema-only": convert_model(only, tmp_path / "ema-only", ConvertOptions(dtype="float32")),
        "ema": convert_model(both, tmp_path / "ema", ConvertOptions(dtype="float32", prefer_ema=True)),
        "regular": convert_model(both, tmp_path / "regular", ConvertOptions(dtype="float32")),
    }
    unets = {name: _weights(tmp_path / name, "unet") for name in reports}
    for name in ("ema-only", "ema"):
        assert all(mx.array_equal(unets[name][k], unets["plain"][k]).item() for k in unets["plain"]), name
    assert not mx.array_equal(unets["regular"]["conv_in.weight"], unets["plain"]["conv_in.weight"]).item()
    assert any("no others" in note for note in reports["ema-only"].notes)
    assert any("--ema" in note for note in reports["regular"].notes)


def _with_constant_output(value: float):
    """A UNet whose output is `value` everywhere: conv_out weight 0, bias `value`."""
    def edit(state):
        state["model.diffusion_model.out.2.weight"] = torch.zeros_like(state["model.diffusion_model.out.2.weight"])
        state["model.diffusion_model.out.2.bias"] = torch.full_like(state["model.diffusion_model.out.2.bias"], value)
        return state
    return edit


@pytest.mark.parametrize("bias, expected", [(-3.0, "v_prediction"), (1.0, "epsilon")])
def test_sd2_v_prediction_probe(tiny_models, tmp_path, bias, expected):
    # probe mean = bias - 0.5: -3.5 is below A1111's -1 threshold, +0.5 is not
    path = _edited(tiny_models, "sd2-v", tmp_path / "sd2.safetensors", _with_constant_output(bias))
    report = convert_model(path, tmp_path / "out", ConvertOptions(dtype="float32"))
    assert report.prediction_type == expected
    assert "probe" in report.prediction_by and f"{bias - 0.5:+.3f}" in report.prediction_by
    config = read_config(tmp_path / "out")
    v = expected == "v_prediction"
    assert (config.default_size, config.unet.sample_size, config.unet.upcast_attention) == (
        (768, 96, True) if v else (512, 64, False)
    )


@pytest.mark.parametrize(
    "text, expected", [('parameterization: "v"', "v_prediction"), ("parameterization: eps", "epsilon")]
)
def test_side_car_yaml_wins_over_the_probe(tiny_models, tmp_path, text, expected):
    bias = 1.0 if expected == "v_prediction" else -3.0  # the probe alone would say the opposite
    path = _edited(tiny_models, "sd2-v", tmp_path / "sd2.safetensors", _with_constant_output(bias))
    (tmp_path / "sd2.yaml").write_text(f"model:\n  params:\n    {text}\n    linear_start: 0.00085\n")
    report = convert_model(path, tmp_path / "out", ConvertOptions())
    assert (report.prediction_type, report.prediction_by) == (expected, "side-car sd2.yaml")


def test_sdxl_v_pred_marker(tiny_models, tmp_path):
    marked = lambda s: {**s, "v_pred": torch.zeros(0), "ztsnr": torch.zeros(0)}  # noqa: E731
    path = _edited(tiny_models, "sdxl", tmp_path / "vpred.safetensors", marked)
    plan = plan_single_file(path, ConvertOptions(), tmp_path)
    assert (plan.config.prediction_type, plan.prediction_by) == ("v_prediction", "v_pred marker key")
    assert plan.config.default_size == 1024
    assert any("ztsnr" in w for w in plan.warnings)
    plain = plan_single_file(tiny_models.single_file("sdxl"), ConvertOptions(), tmp_path)
    assert plain.config.prediction_type == "epsilon"


def test_prediction_flag_overrides_detection(tiny_models, tmp_path):
    path = _edited(tiny_models, "sd2-v", tmp_path / "sd2.safetensors", _with_constant_output(-3.0))
    (tmp_path / "sd2.yaml").write_text('parameterization: "v"\n')
    report = convert_model(path, tmp_path / "out", ConvertOptions(prediction="epsilon"))
    assert (report.prediction_type, report.prediction_by) == ("epsilon", "--prediction")
    plan = plan_single_file(tiny_models.single_file("sdxl"), ConvertOptions(prediction="v_prediction"), tmp_path)
    assert plan.config.prediction_type == "v_prediction"


def test_family_flag_when_detection_cannot_tell(tiny_models, tmp_path):
    # an SD1 file whose CLIP sits under the SGM prefix: no known text-encoder layout, and a tiny
    # UNet context width (128) that matches no released family
    path = _edited(tiny_models, "sd1", tmp_path / "odd.safetensors",
                   _renamed("cond_stage_model.transformer.", "conditioner.embedders.0.transformer."))
    with pytest.raises(ConversionError, match="cannot tell the model family .* pass --family"):
        plan_single_file(path, ConvertOptions(), tmp_path)
    plan = plan_single_file(path, ConvertOptions(family="sd1"), tmp_path)
    assert (plan.config.family, plan.family_by) == ("sd1", "forced by --family")
    assert plan.config.text_encoder.hidden_act == OPENAI


def test_wrong_family_flag_is_explained(tiny_models, tmp_path):
    expected = r"has no text_encoder weights \(expected keys under cond_stage_model.model"
    with pytest.raises(ConversionError, match=expected):
        plan_single_file(tiny_models.single_file("sd1"), ConvertOptions(family="sd2"), tmp_path)


def test_bf16_and_fp16_files_convert_to_the_requested_dtype(tiny_models, tmp_path):
    half = _edited(tiny_models, "sd1", tmp_path / "half.safetensors",
                   lambda s: {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in s.items()})
    convert_model(half, tmp_path / "out", ConvertOptions(dtype="float16"))
    unet = _weights(tmp_path / "out", "unet")
    assert {a.dtype for a in unet.values()} == {mx.float16}
    source = load_file(str(tiny_models.single_file("sd1")))["model.diffusion_model.input_blocks.0.0.weight"]
    expected = source.to(torch.bfloat16).float().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.array(unet["conv_in.weight"].astype(mx.float32)), expected, rtol=1e-3, atol=1e-6)
