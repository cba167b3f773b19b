"""A plan for a diffusers pipeline folder (docs/facts.md §2.1): component configs map onto our config
dataclasses, weights already carry our parameter names and only need the MLX layout."""

from __future__ import annotations

import json
from pathlib import Path

from mlx_sd.config import CLIPTextConfig, ModelConfig, SourceInfo, UNetConfig, VAEConfig
from mlx_sd.model_format import TOKENIZER_FOR

from . import infer_config
from .errors import ConversionError
from .ldm_vae import diffusers_vae_key, is_attention_projection
from .layout import Route, SqueezeToLinear
from .options import ConvertOptions
from .pickle_file import PickleCheckpoint, refuse_pickle
from .plan import ConversionPlan, Read, TensorSource
from .safetensors_file import SafetensorsFile, ShardedSafetensors
from .single_file import open_checkpoint, vae_routes
from .text_encoders import clip_targets
from .tokenizer_files import check_folder, pad_token_id

MODEL_INDEX = "model_index.json"
SD_PIPELINES = (
    "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
    "StableDiffusionInstructPix2PixPipeline", "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline", "StableDiffusionXLInstructPix2PixPipeline",
)
WEIGHT_NAMES = {
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
    "text_encoder_2": "model",
}
PICKLE_NAMES = {"diffusion_pytorch_model": "diffusion_pytorch_model", "model": "pytorch_model"}


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path} is missing; the diffusers folder is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ConversionError(f"{path} is not valid JSON ({exc.__class__.__name__}); the diffusers folder is damaged") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} is not a JSON object; the diffusers folder is damaged")
    return data


def _present(index: dict, folder: Path) -> list[str]:
    """Components listed in model_index.json (not [null, null]) whose folders exist."""
    return [
        name for name in ("unet", "vae", "text_encoder", "text_encoder_2")
        if isinstance(index.get(name), list) and index[name][0] is not None and (folder / name).is_dir()
    ]


def _detect_family(index: dict, components: list[str], unet: UNetConfig, texts: dict[str, dict]) -> tuple[str, str]:
    pipeline = index.get("_class_name", "?")
    if pipeline not in SD_PIPELINES or "unet" not in components or "vae" not in components:
        raise ConversionError(
            f"unknown architecture: pipeline {pipeline} with components {', '.join(components) or 'none'}; "
            "mlx-sd converts Stable Diffusion 1.x, 2.x and SDXL pipelines (a UNet, a VAE and CLIP text encoders)"
        )
    if unet.addition_embed_type == "text_time":
        if "text_encoder" not in components and "text_encoder_2" in components:
            return "sdxl-refiner", f"{pipeline} with only text_encoder_2"
        return "sdxl", f"{pipeline} with a text_time UNet"
    act = texts.get("text_encoder", {}).get("hidden_act")
    if act in ("quick_gelu", "gelu"):
        family = "sd1" if act == "quick_gelu" else "sd2"
        return family, f"{pipeline} with {'an OpenAI CLIP' if family == 'sd1' else 'an OpenCLIP'} ({act}) text encoder"
    by_context = {768: "sd1", 1024: "sd2"}
    if unet.context_dim in by_context:
        return by_context[unet.context_dim], f"{pipeline} with UNet context width {unet.context_dim}"
    raise ConversionError(f"{pipeline}: cannot tell SD1 from SD2 here; pass --family sd1 or --family sd2")


def find_weights(folder: Path, component: str, variant: str | None, allow_pickle: bool) -> TensorSource:
    """The component's weights: plain or sharded safetensors (variant when asked), pickles if allowed."""
    base = WEIGHT_NAMES[component]
    infix = f".{variant}" if variant else ""
    single = folder / f"{base}{infix}.safetensors"
    index = folder / (f"{base}.safetensors.index.{variant}.json" if variant else f"{base}.safetensors.index.json")
    if single.is_file():
        return SafetensorsFile(single)
    if index.is_file():
        shards = sorted(set(_json(index).get("weight_map", {}).values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if not shards or missing:
            listed = ", ".join(missing) or "none listed"
            raise ConversionError(f"{component}: {index.name} lists shards that are missing: {listed}")
        return ShardedSafetensors([folder / s for s in shards])
    if variant is None:
        variants = sorted(folder.glob(f"{base}.*.safetensors"))
        if len(variants) == 1:  # e.g. a repo fetched with only its fp16 files
            return SafetensorsFile(variants[0])
    pickle = folder / f"{PICKLE_NAMES[base]}{infix}.bin"
    if pickle.is_file():
        if not allow_pickle:
            raise refuse_pickle(pickle)
        return PickleCheckpoint(pickle)
    wanted = f"{single.name} (variant {variant})" if variant else single.name
    found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    hint = "; drop --variant" if variant else ""
    raise ConversionError(f"{component}: no {wanted} in {folder} (found {found}){hint}")


def _routes(component: str, source: TensorSource, ignored: list[str]) -> dict[str, list[Route]]:
    """diffusers names are ours; text encoders saved by transformers 5 lack `text_model.`, old VAEs
    use pre-0.14 attention names."""
    routes: dict[str, list[Route]] = {}
    for key, info in source.tensors.items():
        if component.startswith("text_encoder"):
            targets = clip_targets(key)
            if targets is None:
                ignored.append(key)
            elif targets:
                routes[key] = [Route(component, name) for name, _ in targets]
            continue
        name = diffusers_vae_key(key) if component == "vae" else key
        squeeze = component == "vae" and is_attention_projection(name) and len(info.shape) > 2
        routes[key] = [Route(component, name, SqueezeToLinear() if squeeze else None)]
    return routes


def _text_config(raw: dict, usage: CLIPTextConfig, tokenizer: Path | None, has_projection: bool) -> CLIPTextConfig:
    config = CLIPTextConfig.from_dict(raw)
    pad = pad_token_id(tokenizer) if tokenizer else None
    config.pad_token_id = usage.pad_token_id if pad is None else pad
    config.hidden_layer, config.final_norm = usage.hidden_layer, usage.final_norm
    config.projection_dim = config.projection_dim if has_projection else None
    # old transformers configs say eos_token_id 2; every SD vocabulary has <|endoftext|> at 49407
    config.eos_token_id, config.bos_token_id = usage.eos_token_id, usage.bos_token_id
    return config


def plan_diffusers_folder(folder: Path, options: ConvertOptions, name: str, kind: str) -> ConversionPlan:
    index = _json(folder / MODEL_INDEX)
    components = _present(index, folder)
    raw = {c: _json(folder / c / "config.json") for c in components}
    unet = UNetConfig.from_dict(raw.get("unet", {}))
    family, family_by = _detect_family(index, components, unet, raw)
    if options.family:
        family, family_by = options.family, "forced by --family"
    texts = [c for c in ("text_encoder", "text_encoder_2") if (family, c) in infer_config.TEXT_USAGE]
    missing = [c for c in texts if c not in components]
    if missing:
        raise ConversionError(f"{folder}: a {family} pipeline needs {', '.join(missing)}, which the folder lacks")

    ignored: list[str] = []
    reads: dict[str, Read] = {}
    for component in ("unet", "vae", *texts):
        if component == "vae" and options.vae is not None:
            replacement = open_checkpoint(options.vae, options.allow_pickle)
            reads[component] = Read(replacement, vae_routes(replacement, ignored))
            continue
        source = find_weights(folder / component, component, options.variant, options.allow_pickle)
        reads[component] = Read(source, _routes(component, source, ignored), hashed=component == "unet")
    tokenizers = {TOKENIZER_FOR[c]: check_folder(folder / TOKENIZER_FOR[c], TOKENIZER_FOR[c]) for c in texts}
    text_configs = {
        c: _text_config(
            raw[c], infer_config.TEXT_USAGE[(family, c)], tokenizers[TOKENIZER_FOR[c]],
            has_projection="text_projection.weight" in reads[c].source.tensors,
        )
        for c in texts
    }
    if options.vae is not None:  # the replacement's own shapes; the family's scaling factor
        vae = infer_config.vae_config(reads["vae"].torch_shapes()["vae"], family)
        notes = [f"VAE replaced by {options.vae.name}"]
    else:
        vae, notes = VAEConfig.from_dict(raw["vae"]), []
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    scheduler = _json(scheduler_path) if scheduler_path.is_file() else {}
    if options.prediction:
        prediction, prediction_by = options.prediction, "--prediction"
    else:
        prediction = scheduler.get("prediction_type", "epsilon")
        prediction_by = "scheduler_config.json" if "prediction_type" in scheduler else "default (no scheduler config)"
    config = ModelConfig(
        family=family,
        unet=unet,
        vae=vae,
        text_encoder=text_configs.get("text_encoder"),
        text_encoder_2=text_configs.get("text_encoder_2"),
        prediction_type=prediction,
        default_size=unet.sample_size * vae.downscale,
        force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", family == "sdxl")),
        requires_aesthetics_score=bool(index.get("requires_aesthetics_score", family == "sdxl-refiner")),
        dtype=options.dtype,
        source=SourceInfo(name=name),
    )
    unet_files = reads["unet"].source
    hashed = getattr(unet_files, "files", [unet_files])
    return ConversionPlan(
        config=config,
        reads=list(reads.values()),
        tokenizers=tokenizers,
        source_kind=kind,
        family_by=family_by,
        prediction_by=prediction_by,
        hashed="the UNet weights file " + " + ".join(f"unet/{f.path.name}" for f in hashed),
        notes=notes,
        ignored=ignored,
    )
