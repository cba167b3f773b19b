"""A converted model loaded for generation: its config, models and tokenizers.

`Pipeline.load(folder)` reads `model.json`, builds the family's components lazily (no weights are
evaluated until loaded), loads each weight file strictly and casts it to the compute dtype that
`device.policy` picks for the storage dtype (float32 on the CPU, the storage dtype on the GPU).
`Pipeline.generate(request)` runs a generation (mlx_sd.generation) with the CPU's products in the
pipeline's `precision` (mlx_sd.device.products_in); the text encoders can be released to save
memory and are reloaded from the folder when next needed.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .clip import CLIPTextModel
from .conditioning import PromptEncoder
from .cpu.memory import release_free_memory
from .config import ModelConfig
from .device import check_precision, dtype_from_name, policy, products_in
from .generation import generate
from .model_format import TOKENIZER_FOR, ModelFolderError, load_weights, read_config, weights_file
from .preview import PreviewMap, preview_map
from .request import GenerationRequest, GenerationResult, Progress
from .tokenizer import CLIPTokenizer, TokenizerError
from .unet import UNet2DConditionModel
from .vae import AutoencoderKL
from .vae_codec import VAECodec


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
    precision: str = "float32"  # of the CPU's products: "float32" or "bfloat16" (mlx_sd.device.products_in)
    _prompt_encoder: PromptEncoder | None = field(default=None, init=False, repr=False)
    _codec: VAECodec | None = field(default=None, init=False, repr=False)
    _preview: tuple[VAECodec, PreviewMap] | None = field(default=None, init=False, repr=False)

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], dtype: mx.Dtype | str | None = None, precision: str = "float32"
    ) -> "Pipeline":
        """Load a converted model folder; `dtype` overrides the device policy's compute dtype;
        `precision` "bfloat16" makes the CPU's products bfloat16 (faster, not exact; see
        mlx_sd.device.products_in).

        Raises ValueError for a precision this machine cannot run (before reading anything),
        ModelFolderError for an unusable folder and model_format.WeightsError for weights that do
        not match the model (missing, unexpected or misshapen keys).
        """
        check_precision(precision)
        folder = Path(folder)
        config = read_config(folder)
        if dtype is None:
            dtype = policy(dtype_from_name(config.dtype)).compute_dtype
        elif isinstance(dtype, str):
            dtype = dtype_from_name(dtype)

        models = build_models(config)
        for name, model in models.items():
            _load(model, folder, name, dtype, dtype_from_name(config.dtype))

        tokenizers: dict[str, CLIPTokenizer | None] = {"tokenizer": None, "tokenizer_2": None}
        for name, text_config in config.text_encoders.items():
            path = folder / TOKENIZER_FOR[name]
            try:
                tokenizers[TOKENIZER_FOR[name]] = CLIPTokenizer.from_folder(path, text_config.pad_token_id)
            except (TokenizerError, OSError) as exc:
                raise ModelFolderError(f"{TOKENIZER_FOR[name]}: cannot read {path}: {exc}") from exc

        release_free_memory()  # the storage-dtype copies the casts read from
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
            precision=precision,
        )

    def generate(
        self,
        request: GenerationRequest,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Generate the request's images (see mlx_sd.generation).

        Raises RequestError before any model runs when the request cannot run on this model, and
        samplers.Cancelled (with no result) when `cancel()` returns True."""
        with products_in(self.precision):
            return generate(self, request, on_progress, cancel)

    @property
    def codec(self) -> VAECodec:
        """The VAE with scaling, tiling and the float32 fallback (mlx_sd.vae_codec)."""
        if self._codec is None or self._codec.vae is not self.vae:
            self._codec = VAECodec(self.vae)
        return self._codec

    @property
    def preview(self) -> PreviewMap:
        """The latent-to-RGB map for progress previews (mlx_sd.preview), made on first use."""
        codec = self.codec
        if self._preview is None or self._preview[0] is not codec:
            self._preview = (codec, preview_map(self.config.family, codec))
        return self._preview[1]

    def prompt_encoder(self) -> PromptEncoder:
        """The family's prompt encoder; released text encoders are loaded again first."""
        if self._prompt_encoder is None:
            pairs = []
            for name, text_config in self.config.text_encoders.items():
                if getattr(self, name) is None:
                    model = CLIPTextModel(text_config)
                    _load(model, self.folder, name, self.dtype, dtype_from_name(self.config.dtype))
                    setattr(self, name, model)
                pairs.append((getattr(self, TOKENIZER_FOR[name]), getattr(self, name)))
            self._prompt_encoder = PromptEncoder(
                [tokenizer for tokenizer, _ in pairs],
                [model for _, model in pairs],
                force_zeros_for_empty_prompt=self.config.force_zeros_for_empty_prompt,
            )
        return self._prompt_encoder

    def release_text_encoders(self) -> None:
        """Drop the text encoders (and the prompt cache) so MLX can free their memory."""
        self.text_encoder = self.text_encoder_2 = None
        self._prompt_encoder = None
        gc.collect()
        release_free_memory()


def _load(model: nn.Module, folder: Path, name: str, dtype: mx.Dtype, storage_dtype: mx.Dtype) -> None:
    """Load `name`'s weights into `model` to compute in `dtype`; a text encoder or the UNet keeps a
    narrower `storage_dtype` where the device policy says so (the UNet computes in its input's dtype)."""
    chosen, narrower = policy(storage_dtype), storage_dtype.size < dtype.size
    if isinstance(model, CLIPTextModel) and chosen.text_encoders_in_storage_dtype and narrower:
        model.compute_dtype, dtype = dtype, storage_dtype
    elif isinstance(model, UNet2DConditionModel) and chosen.unet_in_storage_dtype and narrower:
        dtype = storage_dtype
    load_weights(model, weights_file(folder, name), name, dtype)
    mx.eval(model.parameters())  # read now: generation should not pay for (or fail on) I/O
