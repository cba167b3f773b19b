"""A model run through diffusers on torch: the reference for parity tests, and a fallback backend.

This package is the only part of mlx_sd that imports torch, and no other module of mlx_sd imports it.
Arrays cross the boundary as numpy in diffusers' layouts (NCHW images and latents).
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from mlx_sd.dtypes import DTYPES as STORAGE_DTYPES

DTYPES = {name: getattr(torch, name) for name in STORAGE_DTYPES}  # our storage dtypes as torch dtypes
MODEL_INDEX = "model_index.json"
UNET_IN_KEY = "model.diffusion_model.input_blocks.0.0.weight"


def torch_device() -> torch.device:
    """MPS on a Mac when available, CUDA when present, else the CPU."""
    if torch.backends.mps.is_available():
        return torch.device("mps")
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Choosing the diffusers pipeline class


def _checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a single-file checkpoint, without reading tensor data where the format allows."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def pipeline_class_for_checkpoint(shapes: dict[str, tuple[int, ...]]) -> str:
    """The diffusers pipeline class name for an original LDM / SGM checkpoint, from its keys
    (docs/facts.md §2.3)."""
    if UNET_IN_KEY not in shapes:
        sample = ", ".join(sorted(shapes)[:3]) or "no keys"
        raise ValueError(
            f"not a Stable Diffusion single-file checkpoint: expected the UNet key {UNET_IN_KEY!r}, found {sample}"
        )
    in_channels = shapes[UNET_IN_KEY][1]
    sdxl_base = any(k.startswith("conditioner.embedders.1.model.") for k in shapes)
    refiner = not sdxl_base and any(k.startswith("conditioner.embedders.0.model.") for k in shapes)
    if refiner:
        return "StableDiffusionXLImg2ImgPipeline"
    if sdxl_base:
        return "StableDiffusionXLInpaintPipeline" if in_channels == 9 else "StableDiffusionXLPipeline"
    if in_channels == 9:
        return "StableDiffusionInpaintPipeline"
    if in_channels == 8:
        return "StableDiffusionInstructPix2PixPipeline"
    return "StableDiffusionPipeline"


def _no_safety_checker(cls: type) -> dict[str, Any]:
    # SD1/SD2 pipelines would otherwise load a 1.2 GB safety checker the engine never uses
    params = inspect.signature(cls.__init__).parameters
    return {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in params else {}


def _load_pipeline(path: Path, config: str | os.PathLike[str] | None, torch_dtype: torch.dtype) -> Any:
    if path.is_dir():
        index = path / MODEL_INDEX
        if not index.is_file():
            raise ValueError(f"{path} is not a diffusers folder: it has no {MODEL_INDEX}")
        pipe_cls = getattr(diffusers, json.loads(index.read_text(encoding="utf-8"))["_class_name"])
        return pipe_cls.from_pretrained(
            str(path), torch_dtype=torch_dtype, local_files_only=True, **_no_safety_checker(pipe_cls)
        )
    if path.is_file():
        pipe_cls = getattr(diffusers, pipeline_class_for_checkpoint(_checkpoint_shapes(path)))
        options: dict[str, Any] = {"torch_dtype": torch_dtype, **_no_safety_checker(pipe_cls)}
        if config is not None:
            options["config"] = str(config)
            options["local_files_only"] = Path(config).is_dir()
        return pipe_cls.from_single_file(str(path), **options)
    raise FileNotFoundError(f"{path}: expected a diffusers folder or a single-file checkpoint, found nothing")


# ---------------------------------------------------------------------------------------------
# The reference pipeline


@dataclass(frozen=True)
class PromptEncoding:
    """Text conditioning exactly as the diffusers pipeline feeds the UNet (classifier-free guidance on)."""

    hidden: np.ndarray  # (B, 77, context_dim)
    negative_hidden: np.ndarray  # (B, 77, context_dim)
    pooled: np.ndarray | None = None  # SDXL / refiner `text_embeds` (B, projection_dim)
    negative_pooled: np.ndarray | None = None


class ReferencePipeline:
    """A diffusers pipeline with numpy-in, numpy-out helpers for parity tests."""

    def __init__(self, pipeline: diffusers.DiffusionPipeline, device: torch.device | None = None):
        self.device = device or torch_device()
        self.pipeline = pipeline.to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.dtype = pipeline.dtype
        # transformers >= 5.6 flattened CLIPTextModel, but diffusers' SD1/SD2 clip_skip path still reads
        # `text_encoder.text_model.final_layer_norm`: point `text_model` back at the model itself
        encoder = getattr(pipeline, "text_encoder", None)
        if encoder is not None and not hasattr(encoder, "text_model"):
            object.__setattr__(encoder, "text_model", encoder)  # plain attribute, not a registered submodule

    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str],
        config: str | os.PathLike[str] | None = None,
        dtype: str = "float32",
        device: str | None = None,
    ) -> "ReferencePipeline":
        """Load a diffusers folder, or a single-file checkpoint (`config`: a diffusers folder or hub repo id
        whose configs and tokenizers to use, so loading can stay offline)."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        torch_dtype = DTYPES[dtype]
        path = Path(source)
        with warnings.catch_warnings():
            # newer diffusers renamed `torch_dtype` to `dtype`; the old name works in every version we support
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = _load_pipeline(path, config, torch_dtype)
        return cls(pipe, torch.device(device) if device else None)

    @property
    def components(self) -> dict[str, Any]:
        """The diffusers components by name: unet, vae, text_encoder(_2), tokenizer(_2), scheduler (None if absent)."""
        return dict(self.pipeline.components)

    @property
    def is_sdxl(self) -> bool:
        """SDXL base or refiner: the UNet takes pooled text embeddings and time ids."""
        return self.pipeline.unet.config.addition_embed_type == "text_time"

    # helpers ----------------------------------------------------------------------------------

    def _tensor(self, array: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device, dtype or self.dtype)

    @staticmethod
    def _numpy(tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().to("cpu", torch.float32).numpy()

    @torch.no_grad()
    def encode_prompt(
        self, prompt: str | list[str], negative: str | list[str] = "", clip_skip: int | None = None
    ) -> PromptEncoding:
        """Hidden states (and SDXL pooled embeddings) for the prompt and the negative prompt.

        An empty negative prompt is passed on as "none given", as the pipelines' defaults do: SDXL base then
        uses zeros (force_zeros_for_empty_prompt). `clip_skip` has diffusers' meaning (A1111's value − 1);
        diffusers' SD1/SD2 pipelines apply it to the prompt only, not to the negative prompt."""
        negative_prompt = negative or None
        if self.is_sdxl:
            hidden, neg_hidden, pooled, neg_pooled = self.pipeline.encode_prompt(
                prompt=prompt, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True,
                negative_prompt=negative_prompt, clip_skip=clip_skip,
            )
            return PromptEncoding(*(self._numpy(t) for t in (hidden, neg_hidden, pooled, neg_pooled)))
        hidden, neg_hidden = self.pipeline.encode_prompt(
            prompt, self.device, 1, True, negative_prompt=negative_prompt, clip_skip=clip_skip
        )
        return PromptEncoding(self._numpy(hidden), self._numpy(neg_hidden))

    @torch.no_grad()
    def unet(
        self,
        sample: np.ndarray,
        timestep: float | np.ndarray,
        context: np.ndarray,
        text_embeds: np.ndarray | None = None,
        time_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        """One UNet call: sample (B, C, h, w), timestep scalar or (B,) (fractional allowed), context
        (B, L, context_dim); SDXL also text_embeds (B, P) and time_ids (B, 6) or (B, 5) -> (B, 4, h, w)."""
        unet = self.pipeline.unet
        config = unet.config
        if sample.ndim != 4 or sample.shape[1] != config.in_channels:
            raise ValueError(
                f"sample: expected shape (B, {config.in_channels}, h, w), received {tuple(sample.shape)}"
            )
        context_dim = config.cross_attention_dim
        if context.ndim != 3 or context.shape[-1] != context_dim:
            raise ValueError(f"context: expected shape (B, L, {context_dim}), received {tuple(context.shape)}")
        added = None
        if self.is_sdxl:
            if text_embeds is None or time_ids is None:
                raise ValueError(
                    "this UNet (SDXL) needs text_embeds (B, pooled width) and time_ids (B, 6 or 5); "
                    f"received text_embeds={None if text_embeds is None else tuple(text_embeds.shape)}, "
                    f"time_ids={None if time_ids is None else tuple(time_ids.shape)}"
                )
            added = {"text_embeds": self._tensor(text_embeds), "time_ids": self._tensor(time_ids)}
        # timesteps stay float32 whatever the model dtype, as the pipelines keep them
        t = self._tensor(np.asarray(timestep, dtype=np.float32), torch.float32)
        out = unet(self._tensor(sample), t, encoder_hidden_states=self._tensor(context), added_cond_kwargs=added)
        return self._numpy(out.sample)

    @torch.no_grad()
    def vae_encode(self, images: np.ndarray) -> np.ndarray:
        """Images (B, 3, H, W) in [-1, 1] -> the encoder's moments (B, 8, H/8, W/8): mean, then log-variance
        (after quant_conv, before clamping and scaling)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected shape (B, 3, H, W), received {tuple(images.shape)}")
        return self._numpy(self.pipeline.vae.encode(self._tensor(images)).latent_dist.parameters)

    @torch.no_grad()
    def vae_decode(self, latents: np.ndarray) -> np.ndarray:
        """Unscaled latents (B, 4, h, w) -> images (B, 3, 8h, 8w) in about [-1, 1]."""
        channels = self.pipeline.vae.config.latent_channels
        if latents.ndim != 4 or latents.shape[1] != channels:
            raise ValueError(f"latents: expected shape (B, {channels}, h, w), received {tuple(latents.shape)}")
        return self._numpy(self.pipeline.vae.decode(self._tensor(latents)).sample)

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        width: int | None = None,
        height: int | None = None,
        steps: int = 20,
        guidance_scale: float = 7.0,
        latents: np.ndarray | None = None,
        scheduler: Any = None,
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
        strength: float | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """Run the whole diffusers pipeline -> images (B, height, width, 3) float32 in [0, 1].

        latents: unscaled standard-normal noise (B, 4, height/8, width/8); the pipeline scales it by the
        scheduler's initial sigma. scheduler: a diffusers scheduler instance used for this call only.
        image / mask / strength: for the inpainting and img2img (refiner) pipelines. seed drives whatever
        else the pipeline draws at random."""
        call = self.pipeline.__call__
        accepted = inspect.signature(call).parameters
        kwargs: dict[str, Any] = {
            "prompt": prompt,
            "negative_prompt": negative_prompt or None,
            "num_inference_steps": steps,
            "guidance_scale": guidance_scale,
            "generator": torch.Generator("cpu").manual_seed(seed),
            "output_type": "np",
        }
        if "height" in accepted:
            kwargs |= {"height": height, "width": width}
        elif (height, width) != (None, None) and image is not None and image.size != (width, height):
            raise ValueError(f"this img2img pipeline keeps the image size {image.size}; received {width}x{height}")
        if latents is not None:
            kwargs["latents"] = self._tensor(latents)
        for name, value in (("image", image), ("mask_image", mask), ("strength", strength)):
            if value is None:
                continue
            if name not in accepted:
                raise ValueError(f"{type(self.pipeline).__name__} takes no {name}")
            kwargs[name] = value
        previous = self.pipeline.scheduler
        if scheduler is not None:
            self.pipeline.scheduler = scheduler
        try:
            return np.asarray(call(**kwargs).images, dtype=np.float32)
        finally:
            self.pipeline.scheduler = previous
