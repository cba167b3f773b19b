"""Key tables: for every tiny kind and both source formats, every converted key lands on an engine
parameter with the right shape and every engine parameter is filled (checked from the plan, before any
tensor is read); plus the pieces of the tables that the tiny files cannot exercise alone."""

import pytest
from mlx.utils import tree_flatten
from mlx_sd.ldm_unet_keys import unet_key
from mlx_sd.pipeline import build_models

from convert.diffusers_folder import plan_diffusers_folder
from convert.ema import ema_name, restore_dots
from convert.layout import mlx_shape
from convert.ldm_vae import vae_key
from convert.options import ConvertOptions
from convert.single_file import plan_single_file
from convert.text_encoders import clip_targets, openclip_targets

KINDS = ("sd1", "sd1-inpaint", "sd2-v", "sdxl", "sdxl-refiner")


def _plan(tiny_models, kind, fmt, tmp_path):
    options = ConvertOptions(dtype="float32")
    if fmt == "single":
        return plan_single_file(tiny_models.single_file(kind), options, tmp_path)
    return plan_diffusers_folder(tiny_models.diffusers(kind), options, name=kind, kind="diffusers folder")


@pytest.mark.parametrize("fmt", ["single", "diffusers"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_key_lands_on_an_engine_parameter(tiny_models, kind, fmt, tmp_path):
    plan = _plan(tiny_models, kind, fmt, tmp_path)
    mapped: dict[str, dict[str, tuple]] = {}
    for read in plan.reads:
        for component, shapes in read.torch_shapes().items():
            for name, shape in shapes.items():
                assert name not in mapped.get(component, {}), f"{component}.{name} is mapped twice"
                mapped.setdefault(component, {})[name] = mlx_shape(shape)
    models = build_models(plan.config)
    assert set(mapped) == set(models)
    for component, model in models.items():
        expected = {name: tuple(p.shape) for name, p in tree_flatten(model.parameters())}
        assert sorted(set(mapped[component]) - set(expected)) == [], f"{component}: keys the engine does not have"
        assert sorted(set(expected) - set(mapped[component])) == [], f"{component}: engine parameters left empty"
        wrong = {n: (mapped[component][n], s) for n, s in expected.items() if mapped[component][n] != s}
        assert wrong == {}, f"{component}: (converted, engine) shapes differ"
    assert plan.ignored == []


@pytest.mark.parametrize("kind", KINDS)
def test_ema_names_restore_to_the_ldm_keys(tiny_models, kind):
    from safetensors import safe_open

    with safe_open(str(tiny_models.single_file(kind)), "np") as handle:
        unet_keys = [k for k in handle.keys() if k.startswith("model.diffusion_model.")]
    assert len(unet_keys) > 100
    assert [restore_dots(ema_name(k)) for k in unet_keys] == unet_keys


def test_unet_table_examples():
    # layers_per_block 2: input block 4 is level 1 slot 0; output block 5 is level 1 slot 2
    assert unet_key("input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", 2) == (
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    )
    assert unet_key("input_blocks.6.0.op.bias", 2) == "down_blocks.1.downsamplers.0.conv.bias"
    assert unet_key("input_blocks.7.0.skip_connection.weight", 2) == "down_blocks.2.resnets.0.conv_shortcut.weight"
    assert unet_key("output_blocks.2.1.conv.weight", 2) == "up_blocks.0.upsamplers.0.conv.weight"
    assert unet_key("output_blocks.5.2.conv.weight", 2) == "up_blocks.1.upsamplers.0.conv.weight"
    assert unet_key("output_blocks.5.1.proj_out.bias", 2) == "up_blocks.1.attentions.2.proj_out.bias"
    assert unet_key("middle_block.2.emb_layers.1.weight", 2) == "mid_block.resnets.1.time_emb_proj.weight"
    assert unet_key("label_emb.0.2.weight", 2) == "add_embedding.linear_2.weight"
    assert unet_key("input_blocks.1.0.in_layers.1.weight", 2) is None  # in_layers.1 is SiLU: no weights
    assert unet_key("input_blocks.1.3.norm.weight", 2) is None


def test_vae_table_reverses_decoder_levels():
    assert vae_key("decoder.up.0.block.2.conv1.weight", 4) == "decoder.up_blocks.3.resnets.2.conv1.weight"
    assert vae_key("decoder.up.3.upsample.conv.bias", 4) == "decoder.up_blocks.0.upsamplers.0.conv.bias"
    assert vae_key("encoder.down.1.block.0.nin_shortcut.weight", 4) == (
        "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"
    )
    assert vae_key("encoder.mid.attn_1.proj_out.weight", 4) == "encoder.mid_block.attentions.0.to_out.0.weight"
    assert vae_key("decoder.norm_out.bias", 4) == "decoder.conv_norm_out.bias"
    assert vae_key("encoder.down.0.upsample.conv.weight", 4) is None


def test_clip_table_repairs_missing_text_model_level():
    assert clip_targets("encoder.layers.0.mlp.fc1.weight") == [("text_model.encoder.layers.0.mlp.fc1.weight", None)]
    assert clip_targets("text_model.embeddings.position_ids") == []
    assert clip_targets("text_model.encoder.layers.0.attn.weight") is None


def test_openclip_table():
    q, k, v = openclip_targets("transformer.resblocks.3.attn.in_proj_weight", drop_layer=None, keep_projection=False)
    assert [name for name, _ in (q, k, v)] == [
        f"text_model.encoder.layers.3.self_attn.{p}_proj.weight" for p in "qkv"
    ]
    assert v[1].shape((384, 128)) == (128, 128)
    assert openclip_targets("transformer.resblocks.3.mlp.c_fc.bias", 3, False) == []  # SD2's unused last layer
    assert openclip_targets("text_projection", None, keep_projection=False) == []
    (name, transform), = openclip_targets("text_projection", None, keep_projection=True)
    assert name == "text_projection.weight" and transform.shape((128, 64)) == (64, 128)
    assert openclip_targets("logit_scale", None, False) == []
    assert openclip_targets("transformer.resblocks.0.attn.unknown.weight", None, False) is None


FULL_SIZE = [("sd15", "sd1"), ("sd21", "sd2"), ("sdxl", "sdxl"), ("sdxl-refiner", "sdxl-refiner")]
UNET_FIELDS = (
    "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels", "layers_per_block",
    "context_dim", "use_linear_projection", "addition_embed_type", "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
)


def _attention_depths(config) -> list[int]:
    """Transformer depth of each level with attention, then the mid block's."""
    depths = config.transformer_depth_per_level()
    return [d for level, d in enumerate(depths) if config.has_attention(level)] + [depths[-1]]


@pytest.mark.parametrize("preset_name, family", FULL_SIZE)
def test_full_size_configs_inferred_from_shapes(preset_name, family):
    """Real architectures, shapes only (torch meta tensors, nothing allocated): shapes plus the family
    rules give back the published configs, heads and depths included."""
    import dataclasses

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from mlx_sd.config import preset
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from convert import infer_config

    expected = preset(preset_name)
    usage_only = ("hidden_layer", "final_norm", "projection_dim")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**dataclasses.asdict(expected.unet))
        vae = AutoencoderKL(
            block_out_channels=expected.vae.block_out_channels,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
        )
        texts = {}
        for name, config in expected.text_encoders.items():
            cls = CLIPTextModelWithProjection if config.projection_dim else CLIPTextModel
            fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in usage_only}
            texts[name] = cls(CLIPTextConfig(**fields, projection_dim=config.projection_dim or 512))

    def shapes(model):
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    got = infer_config.unet_config(shapes(unet), family)
    assert {f: getattr(got, f) for f in UNET_FIELDS} == {f: getattr(expected.unet, f) for f in UNET_FIELDS}
    assert got.heads_per_level() == expected.unet.heads_per_level()
    assert _attention_depths(got) == _attention_depths(expected.unet)
    vae_config = infer_config.vae_config(shapes(vae), family)
    assert (vae_config.block_out_channels, vae_config.scaling_factor) == (
        expected.vae.block_out_channels, expected.vae.scaling_factor
    )
    for name, model in texts.items():
        openclip = expected.text_encoders[name].hidden_act == "gelu"
        # transformers 5 names CLIPTextModel weights without `text_model.`: the CLIP table puts it back
        named = {target: shape for key, shape in shapes(model).items() for target, _ in clip_targets(key) or []}
        assert infer_config.text_config(named, openclip, name, family) == expected.text_encoders[name], name
