"""What a single-file checkpoint is: refuse files that are not whole models (LoRA, embeddings, a VAE
alone), then find the family and where each component's weights live (docs/facts.md §2.2, §2.3)."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_sd.config import FAMILIES
from mlx_sd.ldm_unet_keys import PREFIX as UNET_PREFIX

from .ema import ema_name, has_ema
from .errors import ConversionError
from .layout import Shape

SD1_CLIP = "cond_stage_model.transformer."
SD2_OPENCLIP = ("cond_stage_model.model.", "conditioner.embedders.0.model.")  # the second: SGM-packed SD2
SDXL_CLIP = "conditioner.embedders.0.transformer."
SDXL_BIGG = "conditioner.embedders.1.model."
REFINER_BIGG = "conditioner.embedders.0.model."
SDXL_V_PRED_MARKER = "v_pred"

_LORA_MARKERS = ("lora_down", "lora_up", "lora_A.", "lora_B.", "lora_unet_", "lora_te", "hada_w1", "lokr_w1", ".alpha")
_EMBEDDING_KEYS = {"emb_params", "clip_l", "clip_g"}  # A1111 / SDXL textual-inversion files
_VAE_ONLY_MARKERS = ("encoder.conv_in.weight", "vae.encoder.conv_in.weight", "first_stage_model.encoder.conv_in.weight")


@dataclass(frozen=True)
class TextEncoderSource:
    component: str  # "text_encoder" or "text_encoder_2"
    prefix: str
    openclip: bool  # OpenCLIP naming (fused in_proj) rather than transformers' CLIP naming


@dataclass(frozen=True)
class Layout:
    """The family of a single file and where its components are."""

    family: str
    text_encoders: tuple[TextEncoderSource, ...]
    ema_only: bool  # the UNet exists only as `model_ema.` copies
    has_ema: bool  # EMA copies are present (alongside the regular weights or alone)
    detected_by: str  # one line for the report


def _has_prefix(keys: set[str], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in keys)


def weights_kind(keys: set[str]) -> str:
    """What a file's tensor names say it is: "models" (a whole checkpoint), "loras", "embeddings" or
    "vae" (the library's folder names), or "" when they say none of these."""
    if _has_prefix(keys, UNET_PREFIX) or has_ema(keys):
        return "models"
    if any(marker in key for key in keys for marker in _LORA_MARKERS):
        return "loras"
    if keys & _EMBEDDING_KEYS or any(key.startswith("string_to_param") for key in keys):
        return "embeddings"
    if keys & set(_VAE_ONLY_MARKERS):
        return "vae"
    return ""


def refuse_non_models(name: str, keys: set[str]) -> None:
    """Raise a ConversionError telling the user what the file is when it is not a whole model."""
    if not keys:
        raise ConversionError(f"{name} holds no tensors; it is not a model checkpoint")
    kind = weights_kind(keys)
    if kind != "models":
        if kind == "loras":
            raise ConversionError(
                f"{name} is a LoRA (keys such as {sorted(keys)[0]!r}), not a model: put it in your LoRA folder "
                "and apply it at generation time; convert the base checkpoint instead"
            )
        if kind == "embeddings":
            raise ConversionError(
                f"{name} is a textual-inversion embedding, not a model: use it from your embeddings folder"
            )
        if kind == "vae":
            raise ConversionError(
                f"{name} is a VAE on its own, not a whole model: pass it as --vae {name} when converting a checkpoint"
            )
        prefixes = sorted({key.split(".")[0] for key in keys})[:6]
        raise ConversionError(
            f"{name} has an unknown architecture: no Stable Diffusion UNet weights ({UNET_PREFIX}*) were found "
            f"(top-level names: {', '.join(prefixes)}); mlx-sd converts SD 1.x, 2.x and SDXL checkpoints"
        )


def _unet_context_dim(shapes: dict[str, Shape]) -> int | None:
    for key, shape in shapes.items():
        if key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return shape[1]
    return None


def detect_layout(name: str, shapes: dict[str, Shape], family: str | None = None) -> Layout:
    """The family (detected, or `family` when the user forces it) and the component prefixes."""
    keys = set(shapes)
    refuse_non_models(name, keys)
    ema_only = not _has_prefix(keys, UNET_PREFIX)
    label_emb = f"{UNET_PREFIX}label_emb.0.0.weight"  # SDXL's text_time embedding
    sdxl_like = label_emb in keys or ema_name(label_emb) in keys
    if family is not None:
        if family not in FAMILIES:
            raise ConversionError(f"--family {family!r} is not one of {', '.join(FAMILIES)}")
        detected_by = "forced by --family"
    elif _has_prefix(keys, SDXL_BIGG):
        family, detected_by = "sdxl", f"OpenCLIP bigG text encoder under {SDXL_BIGG}"
    elif _has_prefix(keys, REFINER_BIGG) and sdxl_like:
        family, detected_by = "sdxl-refiner", f"only a bigG text encoder under {REFINER_BIGG} and a text_time UNet"
    elif any(_has_prefix(keys, prefix) for prefix in SD2_OPENCLIP):
        family, detected_by = "sd2", "OpenCLIP ViT-H text encoder"
    elif _has_prefix(keys, SD1_CLIP):
        family, detected_by = "sd1", "OpenAI CLIP text encoder"
    else:
        context = _unet_context_dim(shapes)
        by_context = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl-refiner"}
        if context not in by_context:
            raise ConversionError(
                f"{name}: cannot tell the model family (no known text encoder; UNet context width {context}); "
                "pass --family sd1|sd2|sdxl|sdxl-refiner"
            )
        family, detected_by = by_context[context], f"UNet cross-attention width {context}"
    if family in ("sdxl", "sdxl-refiner") and not sdxl_like:
        raise ConversionError(
            f"{name}: an {family} checkpoint needs a text_time UNet (label_emb.*), which this one lacks"
        )
    return Layout(family, _text_encoders(family, keys), ema_only, has_ema(keys), detected_by)


def _text_encoders(family: str, keys: set[str]) -> tuple[TextEncoderSource, ...]:
    def first_present(candidates: tuple[str, ...]) -> str:
        return next((p for p in candidates if _has_prefix(keys, p)), candidates[0])

    if family == "sd1":
        return (TextEncoderSource("text_encoder", first_present((SD1_CLIP, SDXL_CLIP)), False),)
    if family == "sd2":
        return (TextEncoderSource("text_encoder", first_present(SD2_OPENCLIP), True),)
    if family == "sdxl":
        return (
            TextEncoderSource("text_encoder", SDXL_CLIP, False),
            TextEncoderSource("text_encoder_2", SDXL_BIGG, True),
        )
    return (TextEncoderSource("text_encoder_2", REFINER_BIGG, True),)
