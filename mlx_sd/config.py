"""Dataclass configs for every model component and for a whole converted model.

Component configs use the field names of the diffusers / transformers config.json files they mirror,
so `from_dict` reads those files directly (unknown keys are ignored). The full-size presets at the
bottom are the published Stable Diffusion architectures (docs/facts.md §1.2, §1.4, §1.5).

Every config checks itself when made (`validate`, from `__post_init__`): each field's type and a sane
range, and what must agree between fields (heads divide widths, norm groups divide channels). A
hand-edited or damaged model.json is then one ConfigError naming the field, not a traceback, LAPACK
noise or a blank image later; the upper bounds keep a hostile file from building a model without end.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .dtypes import DTYPES

T = TypeVar("T")

FORMAT_VERSION = 1
FAMILIES = ("sd1", "sd2", "sdxl", "sdxl-refiner")
PREDICTION_TYPES = ("epsilon", "v_prediction")
HIDDEN_ACTS = ("quick_gelu", "gelu")
BETA_SCHEDULES = ("scaled_linear", "linear")
DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
# Sane upper bounds, far above every published model (SDXL: 1280 wide, bigG 32 layers, 10 transformers).
MAX_WIDTH = 16384
MAX_LEVELS = 8
MAX_DEPTH = 128


class ConfigError(ValueError):
    """A config field of the wrong type, outside its range or disagreeing with another; the message
    starts with the field's name (dotted inside a model: `unet.norm_num_groups`)."""


def _from_dict(cls: type[T], data: object) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"expected an object of {cls.__name__} fields, found {_show(data)}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _per_level(value: int | Sequence[int] | None, levels: int) -> list[int]:
    if value is None:
        raise ConfigError("a per-level value is missing")
    if isinstance(value, int):
        return [value] * levels
    return list(value)


def _show(value: object) -> str:
    return f"{value!r:.60}"


def _int(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name}: expected an integer, found {_show(value)}")
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is outside {low}..{high}")
    return value


def _float(name: str, value: object, low: float, high: float) -> float:
    """A finite number with low < value <= high."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, found {_show(value)}")
    if not low < value <= high:
        raise ConfigError(f"{name}: {value} is outside ({low}, {high}]")
    return float(value)


def _bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false, found {_show(value)}")


def _choice(name: str, value: object, choices: Sequence[object]) -> None:
    if not isinstance(value, (str, type(None))) or value not in choices:
        raise ConfigError(f"{name}: {_show(value)} is not one of {', '.join(map(str, choices))}")


def _ints(name: str, value: object, count: int, low: int, high: int) -> list[int]:
    """An int (the same for each of `count` levels) or a list of exactly `count` ints."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ConfigError(f"{name}: expected {count} values (one per level), found {len(value)}")
        return [_int(f"{name}[{i}]", v, low, high) for i, v in enumerate(value)]
    return [_int(name, value, low, high)] * count


def _names(name: str, value: object, choices: Sequence[str]) -> None:
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_LEVELS:
        raise ConfigError(f"{name}: expected a list of 1..{MAX_LEVELS} block types, found {_show(value)}")
    for i, item in enumerate(value):
        _choice(f"{name}[{i}]", item, choices)


def _levels(widths: object, levels: int, layers_per_block: object, groups: object) -> list[int]:
    """The widths of a UNet's or VAE's levels, each split evenly into GroupNorm groups."""
    if not isinstance(widths, (list, tuple)) or not 1 <= levels <= MAX_LEVELS:
        raise ConfigError(f"block_out_channels: expected a list of 1..{MAX_LEVELS} widths, found {_show(widths)}")
    checked = _ints("block_out_channels", widths, levels, 1, MAX_WIDTH)
    _int("layers_per_block", layers_per_block, 1, 16)
    count = _int("norm_num_groups", groups, 1, MAX_WIDTH)
    for level, width in enumerate(checked):
        if width % count:
            raise ConfigError(f"norm_num_groups: {count} groups do not divide block_out_channels[{level}] = {width}")
    return checked


def _within(prefix: str, config: Any) -> None:
    """Validate a part of a model, its field names prefixed with where it sits."""
    if config is None:
        return
    try:
        config.validate()
    except ConfigError as exc:
        raise ConfigError(f"{prefix}.{exc}") from None


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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        vocab = _int("vocab_size", self.vocab_size, 3, 10**6)
        width = _int("hidden_size", self.hidden_size, 1, MAX_WIDTH)
        _int("intermediate_size", self.intermediate_size, 1, 4 * MAX_WIDTH)
        layers = _int("num_hidden_layers", self.num_hidden_layers, 1, MAX_DEPTH)
        heads = _int("num_attention_heads", self.num_attention_heads, 1, width)
        if width % heads:
            raise ConfigError(f"num_attention_heads: {heads} heads do not divide hidden_size {width}")
        _int("max_position_embeddings", self.max_position_embeddings, 1, 4096)
        _choice("hidden_act", self.hidden_act, HIDDEN_ACTS)
        _float("layer_norm_eps", self.layer_norm_eps, 0.0, 1.0)
        if self.projection_dim is not None:
            _int("projection_dim", self.projection_dim, 1, MAX_WIDTH)
        for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
            _int(name, getattr(self, name), 0, vocab - 1)
        _int("hidden_layer", self.hidden_layer, -layers, layers)  # an index into the layers' outputs
        _bool("final_norm", self.final_norm)

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
        self.validate()
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        self.block_out_channels = tuple(self.block_out_channels)

    def validate(self) -> None:
        _int("sample_size", self.sample_size, 1, 1024)
        _int("in_channels", self.in_channels, 1, 64)
        _int("out_channels", self.out_channels, 1, 64)
        _names("down_block_types", self.down_block_types, DOWN_BLOCKS)
        levels = len(self.down_block_types)
        _names("up_block_types", self.up_block_types, UP_BLOCKS)
        if len(self.up_block_types) != levels:
            raise ConfigError(f"up_block_types: expected {levels} (as many as down_block_types), found {len(self.up_block_types)}")
        widths = _levels(self.block_out_channels, levels, self.layers_per_block, self.norm_num_groups)
        _float("norm_eps", self.norm_eps, 0.0, 1.0)
        _ints("cross_attention_dim", self.cross_attention_dim, levels, 1, 4 * MAX_WIDTH)
        _ints("transformer_layers_per_block", self.transformer_layers_per_block, levels, 1, 64)
        name = "attention_head_dim" if self.num_attention_heads is None else "num_attention_heads"
        heads = _ints(name, getattr(self, name), levels, 1, MAX_WIDTH)
        for level, (width, count) in enumerate(zip(widths, heads)):
            if self.down_block_types[level].startswith("CrossAttn") and width % count:
                raise ConfigError(f"{name}: {count} heads do not divide block_out_channels[{level}] = {width}")
        for flag in ("use_linear_projection", "upcast_attention", "flip_sin_to_cos"):
            _bool(flag, getattr(self, flag))
        _int("freq_shift", self.freq_shift, 0, 1)
        if widths[0] % 2 or widths[0] < 4:
            raise ConfigError(f"block_out_channels[0]: the timestep embedding needs an even width of 4 or more, found {widths[0]}")
        _choice("addition_embed_type", self.addition_embed_type, (None, "text_time"))
        if self.addition_embed_type == "text_time":
            time_dim = _int("addition_time_embed_dim", self.addition_time_embed_dim, 4, MAX_WIDTH)
            if time_dim % 2:
                raise ConfigError(f"addition_time_embed_dim: must be even, found {time_dim}")
            _int("projection_class_embeddings_input_dim", self.projection_class_embeddings_input_dim, 1, 16 * MAX_WIDTH)

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
        self.validate()
        self.block_out_channels = tuple(self.block_out_channels)

    def validate(self) -> None:
        _int("in_channels", self.in_channels, 1, 64)
        _int("out_channels", self.out_channels, 1, 64)
        _int("latent_channels", self.latent_channels, 1, 64)
        levels = len(self.block_out_channels) if isinstance(self.block_out_channels, (list, tuple)) else 0
        _levels(self.block_out_channels, levels, self.layers_per_block, self.norm_num_groups)
        _int("sample_size", self.sample_size, 1, 8192)
        _float("scaling_factor", self.scaling_factor, 0.0, 100.0)
        for flag in ("force_upcast", "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"):
            _bool(flag, getattr(self, flag))

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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _int("num_train_timesteps", self.num_train_timesteps, 2, 100_000)
        start = _float("beta_start", self.beta_start, 0.0, 0.5)
        end = _float("beta_end", self.beta_end, 0.0, 0.5)  # below 1 keeps every alpha positive
        if end < start:
            raise ConfigError(f"beta_end: {end} is below beta_start {start}")
        _choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NoiseScheduleConfig":
        return _from_dict(cls, data)


@dataclass
class SourceInfo:
    """Where a converted model came from: `Model hash` in infotext is sha256[:10]."""

    name: str = ""
    sha256: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.name, str) or len(self.name) > 4096:
            raise ConfigError(f"name: expected a text of at most 4096 characters, found {_show(self.name)}")
        sha = self.sha256
        if not isinstance(sha, str) or (sha and (len(sha) != 64 or sha.strip("0123456789abcdef"))):
            raise ConfigError(f"sha256: expected 64 lower-case hex digits or nothing, found {_show(sha)}")

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
        self.validate()

    def validate(self) -> None:
        """Each part's fields, then what the parts must agree on."""
        _choice("family", self.family, FAMILIES)
        _choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        _choice("dtype", self.dtype, tuple(DTYPES))
        _int("default_size", self.default_size, 64, 8192)
        _bool("force_zeros_for_empty_prompt", self.force_zeros_for_empty_prompt)
        _bool("requires_aesthetics_score", self.requires_aesthetics_score)
        for name, kind in (("unet", UNetConfig), ("vae", VAEConfig), ("noise_schedule", NoiseScheduleConfig),
                           ("source", SourceInfo), ("text_encoder", CLIPTextConfig), ("text_encoder_2", CLIPTextConfig)):
            part = getattr(self, name)
            if not isinstance(part, kind) and not (part is None and name.startswith("text_encoder")):
                raise ConfigError(f"{name}: expected {kind.__name__}, found {_show(part)}")
            _within(name, part)
        self._check_parts_agree()

    def _check_parts_agree(self) -> None:
        wanted = {"sd1": ("text_encoder",), "sd2": ("text_encoder",), "sdxl": ("text_encoder", "text_encoder_2"),
                  "sdxl-refiner": ("text_encoder_2",)}[self.family]  # fmt: skip
        if tuple(self.text_encoders) != wanted:
            raise ConfigError(f"a {self.family} model has {' and '.join(wanted)}, found {' and '.join(self.text_encoders) or 'none'}")
        context = sum(encoder.hidden_size for encoder in self.text_encoders.values())
        if self.unet.context_dim != context:
            raise ConfigError(
                f"unet.cross_attention_dim: {self.unet.context_dim} does not match the text encoders' width {context}"
            )
        latent = self.vae.latent_channels
        if self.unet.out_channels != latent or self.unet.in_channels not in (latent, 2 * latent + 1):
            raise ConfigError(
                f"unet.in_channels/out_channels: {self.unet.in_channels}/{self.unet.out_channels} do not fit the VAE's "
                f"{latent} latent channels (expected {latent} or {2 * latent + 1} in, {latent} out)"
            )
        if (self.unet.addition_embed_type == "text_time") != self.family.startswith("sdxl"):
            raise ConfigError(f"unet.addition_embed_type: {self.unet.addition_embed_type!r} does not fit a {self.family} model")
        if self.text_encoder_2 is not None and self.unet.addition_embed_type == "text_time":
            # the pooled prompt, then 6 sizes (SDXL) or 5 with the aesthetic score (refiner), each time-embedded
            pooled = self.text_encoder_2.projection_dim or self.text_encoder_2.hidden_size
            expected = pooled + (5 if self.family == "sdxl-refiner" else 6) * (self.unet.addition_time_embed_dim or 0)
            if self.unet.projection_class_embeddings_input_dim != expected:
                raise ConfigError(
                    f"unet.projection_class_embeddings_input_dim: {self.unet.projection_class_embeddings_input_dim} "
                    f"does not match the pooled prompt and time embeddings' {expected}"
                )

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
    def from_dict(cls, data: object) -> "ModelConfig":
        """The config of a model.json; ConfigError names the field that is wrong."""
        if not isinstance(data, dict):
            raise ConfigError(f"expected a JSON object of model fields, found {_show(data)}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ConfigError(
                f"model.json has format_version {version!r}; this mlx-sd reads version {FORMAT_VERSION}. "
                "Convert the model again with this version's `mlx-sd convert`."
            )
        for required in ("family", "unet", "vae"):
            if required not in data:
                raise ConfigError(f"{required}: missing")
        return cls(
            family=data["family"],
            unet=_part("unet", UNetConfig, data["unet"]),
            vae=_part("vae", VAEConfig, data["vae"]),
            text_encoder=_part("text_encoder", CLIPTextConfig, data.get("text_encoder")),
            text_encoder_2=_part("text_encoder_2", CLIPTextConfig, data.get("text_encoder_2")),
            prediction_type=data.get("prediction_type", "epsilon"),
            default_size=data.get("default_size", 512),
            noise_schedule=_part("noise_schedule", NoiseScheduleConfig, data.get("noise_schedule", {})),
            force_zeros_for_empty_prompt=data.get("force_zeros_for_empty_prompt", False),
            requires_aesthetics_score=data.get("requires_aesthetics_score", False),
            dtype=data.get("dtype", "float16"),
            source=_part("source", SourceInfo, data.get("source", {})),
            format_version=version,
        )


def _part(name: str, kind: type[T], data: object) -> T | None:
    """A part of model.json read with its own from_dict; None when absent (a text encoder)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected an object of {kind.__name__} fields, found {_show(data)}")
    try:
        return kind.from_dict(data)  # type: ignore[attr-defined]
    except ConfigError as exc:
        raise ConfigError(f"{name}.{exc}") from None
    except TypeError as exc:  # a key the dataclass does not take as given (never from our own files)
        raise ConfigError(f"{name}: {exc}") from None


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
