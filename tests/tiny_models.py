"""Tiny random Stable Diffusion models of every family, built with diffusers / transformers.

Each kind keeps every rule of its real family that tensor shapes cannot reveal (UNet heads 8 per level for
SD1 and head_dim 64 elsewhere, text-encoder heads = width / 64, GroupNorm 32 groups, layers_per_block 2,
4 VAE levels, addition_time_embed_dim 256, vocabulary 49408, 77 positions, activations per family) and
shrinks only what shapes show (widths, depths, layer counts, in_channels). A converter that infers a config
from shapes plus the family rules therefore treats these and the real checkpoints alike.

Weights are seeded normal(0, 1/sqrt(fan_in)) with small random biases and norm affines, so activations stay
unit-scale and bugs in biases or norms change the outputs.

    build_pipeline(kind)          -> diffusers pipeline (float32, CPU)
    save_diffusers(kind, folder)  -> diffusers folder (save_pretrained, safetensors)
    save_single_file(kind, path)  -> original-format LDM / SGM .safetensors checkpoint
"""

from __future__ import annotations

import math
import shutil
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

import ldm_export as ldm
from reference.models import bundled_tokenizer, hf_clip_state, save_hub_layout

KINDS = ("sd1", "sd1-inpaint", "sd2-v", "sdxl", "sdxl-refiner")

VOCAB_SIZE = 49408
MAX_POSITIONS = 77
BOS_ID, EOS_ID = 49406, 49407


# ---------------------------------------------------------------------------------------------
# What each kind is made of


@dataclass(frozen=True)
class TextEncoderSpec:
    width: int
    layers: int
    act: str  # "quick_gelu" (OpenAI CLIP) or "gelu" (OpenCLIP)
    projection: bool = False  # CLIPTextModelWithProjection (bigG)

    @property
    def openclip(self) -> bool:
        return self.act == "gelu"

    def config(self) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=self.width,
            intermediate_size=4 * self.width,
            num_hidden_layers=self.layers,
            num_attention_heads=self.width // 64,
            max_position_embeddings=MAX_POSITIONS,
            hidden_act=self.act,
            layer_norm_eps=1e-5,
            projection_dim=self.width,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=0 if self.openclip else EOS_ID,
        )


@dataclass(frozen=True)
class KindSpec:
    family: str  # "sd1", "sd2", "sdxl", "sdxl-refiner" (mlx_sd.config.FAMILIES)
    pipeline: type[DiffusionPipeline]
    unet: dict[str, Any]
    vae_scaling_factor: float
    vae_sample_size: int
    scheduler: type
    scheduler_config: dict[str, Any]
    text_encoder: TextEncoderSpec | None
    text_encoder_2: TextEncoderSpec | None = None
    pipeline_flags: dict[str, Any] = field(default_factory=dict)
    vae_force_upcast: bool = False


_DDPM = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
# As the real repos ship them (docs/facts.md §2.1): SD1.5 PNDM, SD2.1-768 DDIM with v-prediction, SDXL Euler.
_PNDM_SD1 = {**_DDPM, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}
_DDIM_SD2_V = {
    **_DDPM, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "v_prediction",
}
_EULER_SDXL = {
    **_DDPM, "interpolation_type": "linear", "prediction_type": "epsilon", "steps_offset": 1,
    "timestep_spacing": "leading", "use_karras_sigmas": False,
}

_CLIP_L = TextEncoderSpec(width=128, layers=3, act="quick_gelu")
_OPENCLIP_H = TextEncoderSpec(width=128, layers=3, act="gelu")
# SDXL's two encoders must differ in width: loaders tell them apart by it (docs/facts.md §2.3 rule 7). Ten layers,
# because single-file detection looks for `...embedders.N.model.transformer.resblocks.9.*` (docs/facts.md §2.3).
_OPENCLIP_BIGG = TextEncoderSpec(width=192, layers=10, act="gelu", projection=True)

_SD1_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (32, 64, 64, 64),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "cross_attention_dim": _CLIP_L.width,
    "attention_head_dim": 8,  # diffusers' misnomer: 8 heads at every level, as SD1
    "use_linear_projection": False,
}
_SD2_UNET = {
    **_SD1_UNET,
    "sample_size": 96,
    "block_out_channels": (64, 128, 128, 128),
    "attention_head_dim": [1, 2, 2, 2],  # heads = width / 64
    "cross_attention_dim": _OPENCLIP_H.width,
    "use_linear_projection": True,
    "upcast_attention": True,
}
_SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (64, 128, 256),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "transformer_layers_per_block": [1, 1, 2],
    "attention_head_dim": [1, 2, 4],
    "cross_attention_dim": _CLIP_L.width + _OPENCLIP_BIGG.width,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": _OPENCLIP_BIGG.width + 6 * 256,
}
_REFINER_UNET = {
    **_SDXL_UNET,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (64, 128, 128, 128),
    "transformer_layers_per_block": 2,
    "attention_head_dim": [1, 2, 2, 2],
    "cross_attention_dim": _OPENCLIP_BIGG.width,
    "projection_class_embeddings_input_dim": _OPENCLIP_BIGG.width + 5 * 256,
}

SPECS: dict[str, KindSpec] = {
    "sd1": KindSpec(
        "sd1", StableDiffusionPipeline, _SD1_UNET, 0.18215, 512, PNDMScheduler, _PNDM_SD1, _CLIP_L,
        pipeline_flags={"requires_safety_checker": False},
    ),
    "sd1-inpaint": KindSpec(
        "sd1", StableDiffusionInpaintPipeline, {**_SD1_UNET, "in_channels": 9}, 0.18215, 512,
        PNDMScheduler, _PNDM_SD1, _CLIP_L, pipeline_flags={"requires_safety_checker": False},
    ),
    "sd2-v": KindSpec(
        "sd2", StableDiffusionPipeline, _SD2_UNET, 0.18215, 768, DDIMScheduler, _DDIM_SD2_V, _OPENCLIP_H,
        pipeline_flags={"requires_safety_checker": False},
    ),
    "sdxl": KindSpec(
        "sdxl", StableDiffusionXLPipeline, _SDXL_UNET, 0.13025, 1024, EulerDiscreteScheduler, _EULER_SDXL,
        _CLIP_L, _OPENCLIP_BIGG, pipeline_flags={"force_zeros_for_empty_prompt": True, "add_watermarker": False},
        vae_force_upcast=True,
    ),
    "sdxl-refiner": KindSpec(
        "sdxl-refiner", StableDiffusionXLImg2ImgPipeline, _REFINER_UNET, 0.13025, 1024, EulerDiscreteScheduler,
        _EULER_SDXL, None, _OPENCLIP_BIGG,
        pipeline_flags={
            "requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False, "add_watermarker": False,
        },
        vae_force_upcast=True,
    ),
}

_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (32, 32, 64, 64),
    "layers_per_block": 2,
    "norm_num_groups": 32,
}


def spec(kind: str) -> KindSpec:
    if kind not in SPECS:
        raise ValueError(f"unknown tiny model kind {kind!r}; expected one of {', '.join(KINDS)}")
    return SPECS[kind]


# ---------------------------------------------------------------------------------------------
# Building


def _seed(kind: str, component: str) -> torch.Generator:
    # a fixed seed per (kind, component): rebuilding gives identical weights
    return torch.Generator().manual_seed(zlib.crc32(f"{kind}/{component}".encode()))


@torch.no_grad()
def init_unit_scale(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every parameter so activations stay unit-scale and nothing is trivially 0 or 1."""
    done: set[int] = set()
    for module in model.modules():
        params = dict(module.named_parameters(recurse=False))
        if not params:
            continue
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            weight = params["weight"]
            weight.normal_(0.0, 1.0 / math.sqrt(weight[0].numel()), generator=generator)
        elif isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            params["weight"].normal_(1.0, 0.1, generator=generator)
        elif isinstance(module, torch.nn.Embedding):
            params["weight"].normal_(0.0, 1.0, generator=generator)
        else:
            raise TypeError(f"no unit-scale initialisation for {type(module).__name__}")
        if params.get("bias") is not None:
            params["bias"].normal_(0.0, 0.1, generator=generator)
        done.update(id(p) for p in params.values())
    missed = [name for name, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise RuntimeError(f"parameters left uninitialised: {missed[:5]}")


def _text_encoder(kind: str, component: str, te: TextEncoderSpec) -> torch.nn.Module:
    cls = CLIPTextModelWithProjection if te.projection else CLIPTextModel
    model = cls(te.config())
    init_unit_scale(model, _seed(kind, component))
    # The residual stream is used without a final norm (SDXL's penultimate layer): damp each block's
    # contribution so its scale stays about 1 whatever the depth.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("self_attn.out_proj.weight", "mlp.fc2.weight")):
                param.mul_(1 / math.sqrt(te.layers))
    return model.eval()


def build_pipeline(kind: str) -> DiffusionPipeline:
    """A float32 CPU pipeline of the kind, with seeded random weights (identical on every call)."""
    s = spec(kind)
    unet = UNet2DConditionModel(**s.unet)
    init_unit_scale(unet, _seed(kind, "unet"))
    vae = AutoencoderKL(
        **_VAE, sample_size=s.vae_sample_size, scaling_factor=s.vae_scaling_factor, force_upcast=s.vae_force_upcast
    )
    init_unit_scale(vae, _seed(kind, "vae"))
    components: dict[str, Any] = {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "scheduler": s.scheduler.from_config(s.scheduler_config),
    }
    if s.family in ("sd1", "sd2"):
        components |= {"safety_checker": None, "feature_extractor": None}
    if s.family in ("sdxl", "sdxl-refiner"):
        components |= {"image_encoder": None, "feature_extractor": None}
    for name, te, tok in (
        ("text_encoder", s.text_encoder, "tokenizer"),
        ("text_encoder_2", s.text_encoder_2, "tokenizer_2"),
    ):
        if te is not None:
            components[name] = _text_encoder(kind, name, te)
            components[tok] = bundled_tokenizer(0 if te.openclip else EOS_ID)
        elif s.family in ("sdxl", "sdxl-refiner"):
            components[name] = None
            components[tok] = None
    return s.pipeline(**components, **s.pipeline_flags)


# ---------------------------------------------------------------------------------------------
# Saving


def save_diffusers(kind: str, folder: str | Path, pipe: DiffusionPipeline | None = None) -> Path:
    """Save the kind as a diffusers folder laid out as the real hub repos are (reference.models.save_hub_layout)."""
    return save_hub_layout(pipe if pipe is not None else build_pipeline(kind), folder)


def save_configs_only(folder: str | Path, dest: str | Path) -> Path:
    """Copy a diffusers folder without its weight files: the `config` for offline single-file loading
    that cannot silently fall back to the folder's own weights."""
    return Path(shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin")))


def single_file_state_dict(
    kind: str, pipe: DiffusionPipeline | None = None, ema: bool = False
) -> dict[str, torch.Tensor]:
    """The kind's weights under original LDM (SD1/SD2) or SGM (SDXL, refiner) keys and layouts.

    With `ema`, the pipeline's UNet weights go under `model_ema.*` (LDM's flattened EMA names) and
    `model.diffusion_model.*` holds perturbed "training" weights, as in full (non-pruned) checkpoints."""
    s = spec(kind)
    pipe = pipe if pipe is not None else build_pipeline(kind)
    out: dict[str, torch.Tensor] = {}

    unet = ldm.unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config))
    if ema:
        generator = _seed(kind, "ema")
        out |= {ldm.ema_key(k): v for k, v in unet.items()}
        unet = {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in unet.items()}
        out["model_ema.decay"] = torch.tensor(0.9999)
        out["model_ema.num_updates"] = torch.tensor(470000, dtype=torch.int32)
    out |= unet
    out |= ldm.vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config))

    if s.family == "sd1":
        out |= ldm.clip_to_ldm(hf_clip_state(pipe.text_encoder), ldm.SD1_CLIP_PREFIX, MAX_POSITIONS)
    elif s.family == "sd2":
        openclip = ldm.openclip_from_hf(hf_clip_state(pipe.text_encoder))
        generator = _seed(kind, "sd2-extra")
        # real SD2 files keep OpenCLIP's last block and projection; diffusers' 23-layer encoder drops them
        openclip |= ldm.extra_openclip_block(openclip, generator)
        width = s.text_encoder.width
        openclip["text_projection"] = torch.randn((width, width), generator=generator) / math.sqrt(width)
        openclip["logit_scale"] = torch.tensor(math.log(100.0))
        out |= ldm.openclip_to_ldm(openclip, ldm.SD2_OPENCLIP_PREFIX)
    else:
        if s.family == "sdxl":
            out |= ldm.clip_to_ldm(hf_clip_state(pipe.text_encoder), ldm.SDXL_CLIP_PREFIX, MAX_POSITIONS)
            bigg_prefix = ldm.SDXL_OPENCLIP_PREFIX
        else:
            bigg_prefix = ldm.REFINER_OPENCLIP_PREFIX
        openclip = ldm.openclip_from_hf(hf_clip_state(pipe.text_encoder_2))
        openclip["logit_scale"] = torch.tensor(math.log(100.0))
        out |= ldm.openclip_to_ldm(openclip, bigg_prefix)

    if s.family in ("sd1", "sd2"):
        out |= ldm.ddpm_buffers()
    return out


def save_single_file(
    kind: str,
    path: str | Path,
    pipe: DiffusionPipeline | None = None,
    ema: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the kind as an original-format single-file `.safetensors` checkpoint (see single_file_state_dict);
    floating-point tensors are stored as `dtype` (real files are mostly float16)."""
    path = Path(path)
    state = single_file_state_dict(kind, pipe, ema=ema)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().clone() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(state, str(path), metadata={"format": "pt"})
    return path


@contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Run torch on one thread: on a shared 2-core machine, OpenMP's two threads make tiny-model calls
    10-30x slower (measured: a tiny UNet call 2-7 s instead of 0.15 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------
# Session cache (used by tests/conftest.py)


class TinyModelCache:
    """Builds each kind's diffusers folder and single file once, on first use, under `root`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._pipes: dict[str, DiffusionPipeline] = {}
        self._files: dict[tuple[str, str], Path] = {}

    def _pipe(self, kind: str) -> DiffusionPipeline:
        if kind not in self._pipes:
            self._pipes[kind] = build_pipeline(kind)
        return self._pipes[kind]

    def diffusers(self, kind: str) -> Path:
        key = (kind, "diffusers")
        if key not in self._files:
            self._files[key] = save_diffusers(kind, self.root / kind / "diffusers", self._pipe(kind))
        return self._files[key]

    def configs_only(self, kind: str) -> Path:
        key = (kind, "configs")
        if key not in self._files:
            self._files[key] = save_configs_only(self.diffusers(kind), self.root / kind / "configs")
        return self._files[key]

    def single_file(self, kind: str, ema: bool = False) -> Path:
        variant = "single-ema" if ema else "single"
        key = (kind, variant)
        if key not in self._files:
            path = self.root / kind / f"{kind}-{variant}.safetensors"
            self._files[key] = save_single_file(kind, path, self._pipe(kind), ema=ema)
        return self._files[key]
