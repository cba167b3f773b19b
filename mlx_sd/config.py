"""Dataclass configs for every model component and for a whole converted model.

Component configs use the field names of the diffusers / transformers config.json files they mirror,
so `from_dict` reads those files directly (unknown keys are ignored). The full-size presets at the
bottom are the published Stable Diffusion architectures (docs/facts.md §1.2, §1.4, §1.5).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

FORMAT_VERSION = 1
FAMILIES = ("sd1", "sd2", "sdxl", "sdxl-refiner")
PREDICTION_TYPES = ("epsilon", "v_prediction")


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _per_level(value: int | list[int] | tuple[int, ...] | None, levels: int) -> list[int]:
    if value is None:
        raise ValueError("a per-level value is missing")
    if isinstance(value, int):
        return [value] * levels
    return list(value)


@dataclass
class CLIPTextConfig:
    """A CLIP / OpenCLIP text tower in transformers' CLIPTextModel naming."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"  # "quick_gelu" (OpenAI CLIP) or "gelu" (OpenCLIP, erf)
    layer_norm_eps: float = 1e-5
    # Width of `text_projection` (SDXL's bigG); None when the tower has no projection.
    projection_dim: int | None = None
    eos_token_id: int = 49407
    bos_token_id: int = 49406
    # How the family reads the tower (docs/facts.md §1.4): which hidden state feeds cross-attention
    # (-1 = last layer, -2 = penultimate) and whether the final LayerNorm is applied to it.
    hidden_layer: int = -1
    final_norm: bool = True
    # Padding after the first EOS: EOS (49407) for OpenAI CLIP, 0 for OpenCLIP (docs/facts.md §3.2).
    pad_token_id: int = 49407

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CLIPTextConfig":
        return _from_dict(cls, data)


@dataclass
class UNetConfig:
    """UNet2DConditionModel in diffusers' config naming (docs/facts.md §1.1, §1.2, §1.3)."""

    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    up_block_types: tuple[str, ...] = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | list[int] = 768
    transformer_layers_per_block: int | list[int] = 1
    # diffusers' historical misnomer: `attention_head_dim` is the number of heads when
    # `num_attention_heads` is unset (docs/facts.md §1.1).
    attention_head_dim: int | list[int] = 8
    num_attention_heads: int | list[int] | None = None
    use_linear_projection: bool = False
    upcast_attention: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    addition_embed_type: str | None = None  # "text_time" for SDXL base / refiner
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None

    def __post_init__(self) -> None:
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        self.block_out_channels = tuple(self.block_out_channels)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UNetConfig":
        return _from_dict(cls, data)

    @property
    def levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    def heads_per_level(self) -> list[int]:
        heads = self.num_attention_heads if self.num_attention_heads is not None else self.attention_head_dim
        return _per_level(heads, self.levels)

    def transformer_depth_per_level(self) -> list[int]:
        return _per_level(self.transformer_layers_per_block, self.levels)

    def cross_attention_dim_per_level(self) -> list[int]:
        return _per_level(self.cross_attention_dim, self.levels)

    def has_attention(self, level: int) -> bool:
        return self.down_block_types[level].startswith("CrossAttn")

    @property
    def context_dim(self) -> int:
        return self.cross_attention_dim_per_level()[-1]


@dataclass
class VAEConfig:
    """AutoencoderKL in diffusers' config naming (docs/facts.md §1.5)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    sample_size: int = 512
    scaling_factor: float = 0.18215
    force_upcast: bool = False
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(self.block_out_channels)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VAEConfig":
        return _from_dict(cls, data)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class NoiseScheduleConfig:
    """The DDPM training schedule the model was trained with (docs/facts.md §1.7)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NoiseScheduleConfig":
        return _from_dict(cls, data)


@dataclass
class SourceInfo:
    """Where a converted model came from: `Model hash` in infotext is sha256[:10]."""

    name: str = ""
    sha256: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SourceInfo":
        return _from_dict(cls, data)


@dataclass
class ModelConfig:
    """Everything in a converted model's `model.json`."""

    family: str
    unet: UNetConfig
    vae: VAEConfig
    text_encoder: CLIPTextConfig | None = None  # absent for the SDXL refiner
    text_encoder_2: CLIPTextConfig | None = None  # SDXL bigG
    prediction_type: str = "epsilon"
    default_size: int = 512
    noise_schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)
    # SDXL base: an empty negative prompt encodes to zeros (docs/facts.md §5.3).
    force_zeros_for_empty_prompt: bool = False
    # SDXL refiner: aesthetic score in the text_time vector (docs/facts.md §1.3).
    requires_aesthetics_score: bool = False
    dtype: str = "float16"
    source: SourceInfo = field(default_factory=SourceInfo)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {self.prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")

    @property
    def is_inpainting(self) -> bool:
        return self.unet.in_channels == 9

    @property
    def text_encoders(self) -> dict[str, CLIPTextConfig]:
        found = {"text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2}
        return {name: cfg for name, cfg in found.items() if cfg is not None}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"model.json has format_version {version!r}; this mlx-sd reads version {FORMAT_VERSION}. "
                "Convert the model again with this version's `mlx-sd convert`."
            )
        te = data.get("text_encoder")
        te2 = data.get("text_encoder_2")
        return cls(
            family=data["family"],
            unet=UNetConfig.from_dict(data["unet"]),
            vae=VAEConfig.from_dict(data["vae"]),
            text_encoder=CLIPTextConfig.from_dict(te) if te else None,
            text_encoder_2=CLIPTextConfig.from_dict(te2) if te2 else None,
            prediction_type=data.get("prediction_type", "epsilon"),
            default_size=data.get("default_size", 512),
            noise_schedule=NoiseScheduleConfig.from_dict(data.get("noise_schedule", {})),
            force_zeros_for_empty_prompt=data.get("force_zeros_for_empty_prompt", False),
            requires_aesthetics_score=data.get("requires_aesthetics_score", False),
            dtype=data.get("dtype", "float16"),
            source=SourceInfo.from_dict(data.get("source", {})),
            format_version=version,
        )


# ---------------------------------------------------------------------------------------------
# Full-size presets (the published architectures)

CLIP_L = CLIPTextConfig()  # OpenAI CLIP ViT-L/14 text, SD1 usage: last layer + final norm
CLIP_L_SDXL = dataclasses.replace(CLIP_L, hidden_layer=-2, final_norm=False)
# SD2 keeps 23 of OpenCLIP ViT-H's 24 layers (as diffusers does), so its "penultimate" is our last.
OPENCLIP_H = CLIPTextConfig(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    hidden_act="gelu", pad_token_id=0,
)
OPENCLIP_BIGG = CLIPTextConfig(
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    hidden_act="gelu", projection_dim=1280, hidden_layer=-2, final_norm=False, pad_token_id=0,
)

UNET_SD15 = UNetConfig()
UNET_SD2 = UNetConfig(
    attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True,
)
UNET_SD2_V = dataclasses.replace(UNET_SD2, sample_size=96, upcast_attention=True)
UNET_SDXL = UNetConfig(
    sample_size=128,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[5, 10, 20],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
UNET_SDXL_REFINER = UNetConfig(
    sample_size=128,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(384, 768, 1536, 1536),
    transformer_layers_per_block=4,
    attention_head_dim=[6, 12, 24, 24],
    cross_attention_dim=1280,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2560,
)

VAE_SD = VAEConfig()
VAE_SD2_768 = VAEConfig(sample_size=768)
VAE_SDXL = VAEConfig(sample_size=1024, scaling_factor=0.13025, force_upcast=True)


PRESETS = ("sd15", "sd15-inpaint", "sd21-base", "sd21", "sdxl", "sdxl-refiner")


def preset(name: str) -> ModelConfig:
    """Full-size configs by common name: sd15, sd15-inpaint, sd21-base, sd21, sdxl, sdxl-refiner."""
    presets = {
        "sd15": lambda: ModelConfig("sd1", UNET_SD15, VAE_SD, text_encoder=CLIP_L),
        "sd15-inpaint": lambda: ModelConfig(
            "sd1", dataclasses.replace(UNET_SD15, in_channels=9), VAE_SD, text_encoder=CLIP_L
        ),
        "sd21-base": lambda: ModelConfig("sd2", UNET_SD2, VAE_SD, text_encoder=OPENCLIP_H),
        "sd21": lambda: ModelConfig(
            "sd2", UNET_SD2_V, VAE_SD2_768, text_encoder=OPENCLIP_H,
            prediction_type="v_prediction", default_size=768,
        ),
        "sdxl": lambda: ModelConfig(
            "sdxl", UNET_SDXL, VAE_SDXL, text_encoder=CLIP_L_SDXL, text_encoder_2=OPENCLIP_BIGG,
            default_size=1024, force_zeros_for_empty_prompt=True,
        ),
        "sdxl-refiner": lambda: ModelConfig(
            "sdxl-refiner", UNET_SDXL_REFINER, VAE_SDXL, text_encoder_2=OPENCLIP_BIGG,
            default_size=1024, requires_aesthetics_score=True,
        ),
    }
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    return copy.deepcopy(presets[name]())  # callers may edit their copy; the module presets stay
