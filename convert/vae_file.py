"""A VAE on its own, read into the engine's VAE parameter layout in memory for `--vae` at generation time
(mlx_sd.vae_swap calls it; nothing is written).

Accepted: a single VAE file as users download it (`vae-ft-mse-840000-ema-pruned.safetensors`: LDM names,
bare or under `first_stage_model.`; `sdxl_vae.safetensors`: diffusers names), a diffusers `vae` folder,
and `.pt` / `.ckpt` files only when pickles are allowed (torch's weights-only unpickler). The keys go
through the converter's one VAE table (convert.single_file.vae_routes). A whole checkpoint is refused
(its VAE is the model's own: convert it), and so is a VAE whose architecture differs from the model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx_sd.config import ModelConfig, VAEConfig
from mlx_sd.ldm_unet_keys import PREFIX as UNET_PREFIX
from mlx_sd.model_format import WeightsError, check_weights
from mlx_sd.vae import AutoencoderKL
from mlx_sd.vae_swap import LoadedVae

from . import infer_config
from .diffusers_folder import MODEL_INDEX, find_weights
from .ema import has_ema
from .errors import ConversionError
from .orchestrator import read_weights
from .plan import Read, TensorSource
from .single_file import open_checkpoint, vae_routes

# What a VAE's shapes reveal of its architecture, in the words a user reads
_ARCHITECTURE = {
    "latent_channels": "latent channels",
    "block_out_channels": "block widths",
    "layers_per_block": "resnets per block",
    "in_channels": "image channels",
    "out_channels": "output channels",
    "use_quant_conv": "a quant_conv",
    "use_post_quant_conv": "a post_quant_conv",
    "mid_block_add_attention": "mid-block attention",
}


@dataclass(frozen=True)
class VaeFileReader:
    """mlx_sd.vae_swap.VaeReader: `reader(path, model_config, dtype)` -> the VAE's weights in our layout."""

    allow_pickle: bool = False

    def __call__(self, path: Path, model: ModelConfig, dtype: mx.Dtype) -> LoadedVae:
        source = self._open(path)
        _refuse_whole_model(source)
        ignored: list[str] = []
        read = Read(source, vae_routes(source, ignored), hashed=True)
        try:
            found = infer_config.vae_config(read.torch_shapes().get("vae", {}), model.family)
        except ValueError as exc:  # ConversionError, or ConfigError for shapes no VAE has
            raise ConversionError(f"{path.name} is no usable VAE ({exc})") from None
        _check_architecture(path.name, found, model)
        weights, sha256 = read_weights([read], dtype)
        try:
            check_weights(AutoencoderKL(model.vae), weights.get("vae", {}), "vae")
        except WeightsError as exc:
            raise ConversionError(f"{path.name} is an incomplete or damaged VAE ({exc})") from None
        return LoadedVae(weights["vae"], sha256)

    def _open(self, path: Path) -> TensorSource:
        if not path.is_dir():
            return open_checkpoint(path, self.allow_pickle)
        if (path / MODEL_INDEX).is_file():
            raise ConversionError(
                f"{path} is a whole diffusers pipeline, not a VAE: pass its vae folder ({path / 'vae'})"
            )
        return find_weights(path, "vae", None, self.allow_pickle)


def _refuse_whole_model(source: TensorSource) -> None:
    keys = source.tensors.keys()
    if any(key.startswith(UNET_PREFIX) for key in keys) or has_ema(source.tensors):
        raise ConversionError(
            f"{source.path.name} is a whole checkpoint (it holds a UNet), not a VAE: pass a VAE file, "
            "or convert the checkpoint with `mlx-sd convert` to use its VAE"
        )


def _check_architecture(name: str, found: VAEConfig, model: ModelConfig) -> None:
    for field, words in _ARCHITECTURE.items():
        theirs, ours = getattr(found, field), getattr(model.vae, field)
        if theirs != ours:
            raise ConversionError(
                f"{name} is a VAE of another architecture ({words}: {_shown(theirs)}, where this "
                f"{model.family} model's VAE has {_shown(ours)}); use a VAE made for {model.family}"
            )


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return "/".join(str(v) for v in value)
    return str(value)
