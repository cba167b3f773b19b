"""A converted model loaded for generation: its config, models and tokenizers.

`Pipeline.load(folder)` reads `model.json`, builds the family's components lazily (no weights are
evaluated until loaded), loads each weight file strictly and casts it to the compute dtype that
`device.policy` picks for the storage dtype (float32 on the CPU, the storage dtype on the GPU).
Generation methods build on this class.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .clip import CLIPTextModel
from .config import ModelConfig
from .device import dtype_from_name, policy
from .model_format import TOKENIZER_FOR, ModelFolderError, load_weights, read_config, weights_file
from .tokenizer import CLIPTokenizer, TokenizerError
from .unet import UNet2DConditionModel
from .vae import AutoencoderKL


def build_models(config: ModelConfig) -> dict[str, nn.Module]:
    """The family's models with unevaluated random parameters, by component name (file stem).

    MLX is lazy, so this costs no memory until the parameters are evaluated or replaced.
    """
    models: dict[str, nn.Module] = {
        "unet": UNet2DConditionModel(config.unet),
        "vae": AutoencoderKL(config.vae),
    }
    for name, text_config in config.text_encoders.items():
        models[name] = CLIPTextModel(text_config)
    return models


def parameter_count(module: nn.Module) -> int:
    return sum(array.size for _, array in tree_flatten(module.parameters()))


@dataclass(eq=False)
class Pipeline:
    config: ModelConfig
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel | None  # None for the SDXL refiner
    text_encoder_2: CLIPTextModel | None  # SDXL / refiner only
    tokenizer: CLIPTokenizer | None
    tokenizer_2: CLIPTokenizer | None
    dtype: mx.Dtype  # the compute dtype of every model
    folder: Path

    @classmethod
    def load(cls, folder: str | os.PathLike[str], dtype: mx.Dtype | str | None = None) -> "Pipeline":
        """Load a converted model folder; `dtype` overrides the device policy's compute dtype.

        Raises ModelFolderError for an unusable folder and model_format.WeightsError for weights
        that do not match the model (missing, unexpected or misshapen keys).
        """
        folder = Path(folder)
        config = read_config(folder)
        if dtype is None:
            dtype = policy(dtype_from_name(config.dtype)).compute_dtype
        elif isinstance(dtype, str):
            dtype = dtype_from_name(dtype)

        models = build_models(config)
        for name, model in models.items():
            load_weights(model, weights_file(folder, name), name, dtype)
            mx.eval(model.parameters())  # read now: generation should not pay for (or fail on) I/O

        tokenizers: dict[str, CLIPTokenizer | None] = {"tokenizer": None, "tokenizer_2": None}
        for name, text_config in config.text_encoders.items():
            path = folder / TOKENIZER_FOR[name]
            try:
                tokenizers[TOKENIZER_FOR[name]] = CLIPTokenizer.from_folder(path, text_config.pad_token_id)
            except (TokenizerError, OSError) as exc:
                raise ModelFolderError(f"{TOKENIZER_FOR[name]}: cannot read {path}: {exc}") from exc

        return cls(
            config=config,
            unet=models["unet"],
            vae=models["vae"],
            text_encoder=models.get("text_encoder"),
            text_encoder_2=models.get("text_encoder_2"),
            tokenizer=tokenizers["tokenizer"],
            tokenizer_2=tokenizers["tokenizer_2"],
            dtype=dtype,
            folder=folder,
        )

