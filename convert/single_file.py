"""A plan for a single-file original checkpoint (LDM for SD1/SD2, SGM for SDXL): detect the family,
route every key through its table, infer the configs from the shapes, settle the prediction type."""

from __future__ import annotations

import re
from pathlib import Path

from mlx_sd.config import ModelConfig, SourceInfo
from mlx_sd.ldm_unet_keys import PREFIX as UNET_PREFIX
from mlx_sd.ldm_unet_keys import unet_key
from mlx_sd.model_format import TOKENIZER_FOR
from mlx_sd.pickle_files import PICKLE_SUFFIXES
from mlx_sd.tokenizer import EOS_TOKEN, OPENCLIP_PAD_TOKEN

from . import infer_config
from .detect import SDXL_V_PRED_MARKER, Layout, TextEncoderSource, detect_layout
from .ema import restore_dots
from .errors import ConversionError
from .ldm_vae import PREFIX as VAE_PREFIX
from .ldm_vae import diffusers_vae_key, is_attention_projection, vae_key
from .layout import Route, SqueezeToLinear
from .options import ConvertOptions
from .pickle_file import PickleCheckpoint, refuse_pickle
from .plan import ConversionPlan, Read, TensorSource, Weights
from .prediction import PROBE_THRESHOLD, probe_prediction, sidecar_yaml, yaml_prediction
from .local_paths import require_regular_file
from .safetensors_file import SafetensorsFile
from .text_encoders import clip_targets, openclip_targets
from .tokenizer_files import bundled

DEFAULT_SIZE = {"sd1": 512, "sd2": 512, "sdxl": 1024, "sdxl-refiner": 1024}
SD2_V_SIZE = 768
_OP_RE = re.compile(r"model\.diffusion_model\.input_blocks\.(\d+)\.0\.op\.weight$")
_RESBLOCK_RE = re.compile(r"transformer\.resblocks\.(\d+)\.")
_VAE_LEVEL_RE = re.compile(r"encoder\.down\.(\d+)\.block\.0\.conv1\.weight$")
_VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
_MARKERS = {  # other schedule markers (docs/facts.md §2.4) we report but do not apply
    "ztsnr": "a zero-terminal-SNR schedule (ztsnr)",
    "edm_vpred.sigma_max": "an EDM v-prediction schedule",
    "edm_mean": "Playground v2.5's EDM latent statistics",
}


def open_checkpoint(path: Path, allow_pickle: bool) -> TensorSource:
    require_regular_file(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise refuse_pickle(path)
        return PickleCheckpoint(path)
    return SafetensorsFile(path)


def plan_single_file(path: Path, options: ConvertOptions, staging: Path) -> ConversionPlan:
    source = open_checkpoint(path, options.allow_pickle)
    shapes = {key: info.shape for key, info in source.tensors.items()}
    layout = detect_layout(path.name, shapes, options.family)
    routes: dict[str, list[Route]] = {}
    ignored: list[str] = []
    notes: list[str] = []

    unet_sources = _unet_sources(source, layout, options.prefer_ema, notes)
    layers = _layers_per_block(unet_sources)
    for ldm, key in unet_sources.items():
        name = unet_key(ldm[len(UNET_PREFIX):], layers)
        _route(routes, ignored, key, [Route("unet", name)] if name else None)

    for text in layout.text_encoders:
        _route_text(source, layout, text, routes, ignored)

    reads = [Read(source, routes, hashed=True)]
    if options.vae is not None:
        vae_source = open_checkpoint(options.vae, options.allow_pickle)
        reads.append(Read(vae_source, vae_routes(vae_source, ignored)))
        notes.append(f"VAE replaced by {options.vae.name}")
    else:
        vae_keys = {k: k[len(VAE_PREFIX):] for k in source.tensors if k.startswith(VAE_PREFIX) and ".loss." not in k}
        routes.update(_vae_routes(source, vae_keys, ignored))

    shapes_by_component: dict[str, dict] = {}
    for read in reads:
        for component, found in read.torch_shapes().items():
            shapes_by_component.setdefault(component, {}).update(found)
    _require_components(path.name, layout, shapes_by_component, options)

    family = layout.family
    texts = {
        t.component: infer_config.text_config(shapes_by_component[t.component], t.openclip, t.component, family)
        for t in layout.text_encoders
    }
    config = ModelConfig(
        family=family,
        unet=infer_config.unet_config(shapes_by_component["unet"], family),
        vae=infer_config.vae_config(shapes_by_component["vae"], family),
        text_encoder=texts.get("text_encoder"),
        text_encoder_2=texts.get("text_encoder_2"),
        force_zeros_for_empty_prompt=family == "sdxl",
        requires_aesthetics_score=family == "sdxl-refiner",
        dtype=options.dtype,
        source=SourceInfo(name=path.name),
    )
    tokenizers = {
        TOKENIZER_FOR[t.component]: bundled(OPENCLIP_PAD_TOKEN if t.openclip else EOS_TOKEN, staging)
        for t in layout.text_encoders
    }
    plan = ConversionPlan(
        config=config,
        reads=reads,
        tokenizers=tokenizers,
        source_kind="single file",
        family_by=layout.detected_by,
        prediction_by="",
        hashed=f"the whole file {path.name}",
        notes=notes,
        warnings=[f"the file marks {what}, which mlx-sd does not apply" for k, what in _MARKERS.items() if k in shapes],
        dropped=len(set(source.tensors) - set(routes) - set(ignored)),
        ignored=ignored,
    )
    _settle_prediction(plan, path, options, SDXL_V_PRED_MARKER in shapes)
    return plan


def _route(routes: dict[str, list[Route]], ignored: list[str], key: str, found: list[Route] | None) -> None:
    if found is None:
        ignored.append(key)
    elif found:
        routes[key] = found


def _unet_sources(source: TensorSource, layout: Layout, prefer_ema: bool, notes: list[str]) -> dict[str, str]:
    """LDM UNet key -> the source key holding its weights (the regular one or its EMA copy)."""
    if layout.ema_only or (prefer_ema and layout.has_ema):
        notes.append("UNet from the EMA weights" + (" (the file has no others)" if layout.ema_only else ""))
        return {dotted: key for key in source.tensors if (dotted := restore_dots(key))}
    if layout.has_ema:
        notes.append("the file also holds EMA weights; the regular ones were used (--ema uses the EMA copies)")
    return {key: key for key in source.tensors if key.startswith(UNET_PREFIX)}


def _layers_per_block(unet_keys: dict[str, str]) -> int:
    downsamplers = sorted(int(m.group(1)) for key in unet_keys if (m := _OP_RE.match(key)))
    if not downsamplers:
        raise ConversionError("unet: no downsampling blocks (input_blocks.N.0.op) found; unknown architecture")
    return downsamplers[0] - 1


def _route_text(
    source: TensorSource, layout: Layout, text: TextEncoderSource, routes: dict[str, list[Route]], ignored: list[str]
) -> None:
    keys = [k for k in source.tensors if k.startswith(text.prefix)]
    # SD2 uses 23 of OpenCLIP ViT-H's 24 layers (diffusers drops the last, docs/facts.md §2.7)
    drop_layer = None
    if text.openclip and layout.family == "sd2":
        blocks = {int(m.group(1)) for k in keys if (m := _RESBLOCK_RE.match(k[len(text.prefix):]))}
        drop_layer = max(blocks) if blocks else None
    for key in keys:
        rest = key[len(text.prefix):]
        if text.openclip:
            targets = openclip_targets(rest, drop_layer, keep_projection=text.component == "text_encoder_2")
        else:
            targets = clip_targets(rest)
        _route(routes, ignored, key, None if targets is None else [Route(text.component, n, t) for n, t in targets])


def _vae_routes(source: TensorSource, keys: dict[str, str], ignored: list[str]) -> dict[str, list[Route]]:
    """`keys` maps source key -> its name without prefix, in LDM or diffusers naming."""
    ldm = any(name.startswith("encoder.down.") for name in keys.values())
    levels = len({m.group(1) for name in keys.values() if (m := _VAE_LEVEL_RE.match(name))})
    routes: dict[str, list[Route]] = {}
    for key, name in keys.items():
        target = vae_key(name, levels) if ldm else diffusers_vae_key(name)
        if target is None or (not ldm and not target.startswith(_VAE_PARTS)):
            ignored.append(key)
            continue
        squeeze = is_attention_projection(target) and len(source.tensors[key].shape) > 2
        routes[key] = [Route("vae", target, SqueezeToLinear() if squeeze else None)]
    return routes


def vae_routes(source: TensorSource, ignored: list[str]) -> dict[str, list[Route]]:
    """Routes for a standalone VAE file: no prefix, `first_stage_model.` or `vae.`; LDM or diffusers names."""
    keys: dict[str, str] = {}
    for key in source.tensors:
        for prefix in (VAE_PREFIX, "vae.", ""):
            if key.startswith(prefix):
                keys[key] = key[len(prefix):]
                break
    keys = {k: n for k, n in keys.items() if not n.startswith("loss.") and k != "model_ema.decay"}
    routes = _vae_routes(source, keys, ignored)
    if not routes:
        raise ConversionError(f"--vae {source.path.name} holds no VAE weights (expected encoder.* / decoder.* keys)")
    return routes


def _require_components(name: str, layout: Layout, shapes: dict[str, dict], options: ConvertOptions) -> None:
    hint = "" if options.family else "; if the family was misdetected, pass --family"
    if "unet" not in shapes:
        raise ConversionError(f"{name}: no UNet weights could be mapped; unknown architecture")
    for text in layout.text_encoders:
        if text.component not in shapes:
            raise ConversionError(
                f"{name} has no {text.component} weights (expected keys under {text.prefix}*){hint}"
            )
    if "vae" not in shapes:
        raise ConversionError(f"{name} has no VAE weights ({VAE_PREFIX}*); pass a VAE file with --vae FILE")


def _settle_prediction(plan: ConversionPlan, path: Path, options: ConvertOptions, v_pred_marker: bool) -> None:
    config = plan.config
    yaml = sidecar_yaml(path)
    from_yaml = yaml_prediction(yaml) if yaml else None
    if options.prediction:
        _finish(config, options.prediction)
        plan.prediction_by = "--prediction"
    elif from_yaml:
        _finish(config, from_yaml)
        plan.prediction_by = f"side-car {yaml.name}"
    elif config.family in ("sdxl", "sdxl-refiner"):
        _finish(config, "v_prediction" if v_pred_marker else "epsilon")
        plan.prediction_by = "v_pred marker key" if v_pred_marker else "SDXL default (no v_pred marker key)"
    elif config.family == "sd2" and config.unet.in_channels == config.unet.out_channels:
        plan.after_read = _probe  # the probe needs the converted UNet
    else:
        _finish(config, "epsilon")
        plan.prediction_by = f"{config.family} default" + (" (inpainting)" if config.family == "sd2" else "")


def _probe(plan: ConversionPlan, weights: Weights) -> None:
    prediction, mean = probe_prediction(plan.config.unet, weights["unet"])
    _finish(plan.config, prediction)
    plan.prediction_by = f"A1111's probe (mean {mean:+.3f}; v-prediction below {PROBE_THRESHOLD:+.1f})"


def _finish(config: ModelConfig, prediction: str) -> None:
    """Settle the prediction type and what depends on it: SD2 768-v's size and upcast attention."""
    config.prediction_type = prediction
    size = DEFAULT_SIZE[config.family]
    if config.family == "sd2" and prediction == "v_prediction":
        size = SD2_V_SIZE
        config.unet.upcast_attention = True  # as diffusers sets for SD2.1-768 (docs/facts.md §1.2)
    config.default_size = size
    config.unet.sample_size = size // config.vae.downscale
    config.vae.sample_size = size
