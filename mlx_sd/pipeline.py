"""A converted model loaded for generation: its config, models and tokenizers.

`Pipeline.load(folder)` reads `model.json`, builds the family's components lazily (no weights are
evaluated until loaded), loads each weight file strictly in the dtype the device computes in
(float32 on the CPU, the storage dtype on the GPU; mlx_sd.device.compute_dtype), then prepares the
models once: on the CPU its formulations are swapped in (mlx_sd.cpu.accelerate), and on every
device the UNet and VAE evaluate block by block so that a cancel takes effect inside a step
(mlx_sd.block_evaluation). `Pipeline.generate(request)` runs a generation (mlx_sd.generation) with
the CPU's products in the pipeline's `precision`; the text encoders can be released to save memory
and are reloaded from the folder when next needed. LoRAs and textual-inversion embeddings come from
the pipeline's `library` (mlx_sd.library; `use_resources`).
"""

from __future__ import annotations

import functools
import gc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

from .block_evaluation import Boundary, evaluate_blocks
from .clip import CLIPTextModel
from .conditioning import PromptEncoder
from .config import ModelConfig
from .cpu.accelerate import accelerate, weight_dtype
from .cpu.lora_merge import merging_for
from .cpu.memory import release_free_memory
from .cpu.options import CpuOptions
from .device import check_precision, compute_dtype, current_device, dtype_from_name
from .embeddings import BundledEmbedding
from .estimate import Estimate, estimate
from .generation import generate
from .infotext import hashes_value
from .library import Library
from .lora.active import PipelineLoras, ResourcesInUse, without_lora_tags
from .model_format import TOKENIZER_FOR, LoadedFiles, ModelFolderError, load_weights, read_config, weights_file
from .preview import PreviewMap, preview_map
from .refiner import refiner_weight_bytes
from .request import GenerationRequest, GenerationResult, Progress
from .textual_inversion import EmbeddingMatch, TextualInversion
from .tokenizer import CLIPTokenizer, TokenizerError
from .module_swap import M
from .unet import UNet2DConditionModel
from .vae import AutoencoderKL
from .vae_codec import VAECodec
from .vae_swap import VaeChoice, VaeReader, VaeSwap, vae_path


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
    precision: str = "float32"  # of the CPU's products: "float32" or "bfloat16" (CpuOptions.products)
    files: LoadedFiles | None = None  # the weight files as loaded: checked before each generation
    cpu: CpuOptions | None = None  # the CPU formulations swapped into the models; None on the GPU
    boundary: Boundary = field(default_factory=Boundary)  # between the UNet's and VAE's blocks
    # weight bytes by component and the UNet's weights per level, measured at load for `estimate`
    sizes: tuple[dict[str, int], list[int]] = field(default_factory=lambda: ({}, []), repr=False)
    # LoRAs and embeddings (issue 17): looked up in `library`; pickles read only with `allow_pickle`
    library: Library = field(default_factory=Library, repr=False)
    allow_pickle: bool = False
    _loras: PipelineLoras | None = field(default=None, init=False, repr=False)
    _textual_inversion: TextualInversion | None = field(default=None, init=False, repr=False)
    # hires fix's upscaler models, name or file -> network: the caller's reader (convert.upscaler_file)
    read_upscaler: Callable[[str], nn.Module] | None = field(default=None, repr=False)
    _prompt_encoder: PromptEncoder | None = field(default=None, init=False, repr=False)
    # the SDXL refiner last used with this base model (mlx_sd.refiner), and whether the base's UNet
    # weights were released for it in low-memory mode
    refiner: "Pipeline | None" = field(default=None, init=False, repr=False)
    unet_released: bool = field(default=False, init=False, repr=False)
    _codec: VAECodec | None = field(default=None, init=False, repr=False)
    _preview: tuple[VAECodec, PreviewMap] | None = field(default=None, init=False, repr=False)
    # models: the VAE chosen per generation (mlx_sd.vae_swap); an entry point sets `vae_reader`
    # (convert.vae_file.read_vae: the engine does not read other formats' keys)
    vae_reader: VaeReader | None = None
    _vaes: VaeSwap | None = field(default=None, init=False, repr=False)

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], dtype: mx.Dtype | str | None = None, precision: str = "float32",
        library: Library | None = None, allow_pickle: bool = False,
    ) -> "Pipeline":
        """Load a converted model folder; `dtype` overrides the device policy's compute dtype;
        `precision` "bfloat16" makes the CPU's products bfloat16 (faster, not exact: factors rounded
        to bfloat16, summed in float32, as torch's bfloat16 autocast). LoRAs and embeddings are looked
        up in `library` (default: the default library folder's); `allow_pickle` lets them be pickles.

        Raises ValueError for a precision this machine cannot run (before reading anything),
        ModelFolderError for an unusable folder and model_format.WeightsError for weights that do
        not match the model (missing, unexpected or misshapen keys).
        """
        check_precision(precision)
        folder = Path(folder)
        config = read_config(folder)
        if dtype is None:
            dtype = compute_dtype(dtype_from_name(config.dtype))
        elif isinstance(dtype, str):
            dtype = dtype_from_name(dtype)
        cpu = CpuOptions.for_this_machine() if current_device() == "cpu" else None
        boundary = Boundary()

        models = build_models(config)
        files = LoadedFiles.of_model(folder, config)  # before reading: a change while loading shows too
        for name, model in models.items():
            models[name] = _load(model, folder, name, dtype, dtype_from_name(config.dtype), cpu, boundary)

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
            files=files,
            cpu=cpu,
            boundary=boundary,
            sizes=({name: _bytes(model) for name, model in models.items()}, _parameters_per_level(models["unet"])),
            library=library or Library(),
            allow_pickle=allow_pickle,
        )

    def generate(
        self,
        request: GenerationRequest,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        check_memory: bool = True,
    ) -> GenerationResult:
        """Generate the request's images (see mlx_sd.generation).

        Raises RequestError before any model runs when the request cannot run on this model,
        estimate.TooLargeError when its estimated memory exceeds the machine's (`estimate`; not
        with `check_memory=False`, for a caller whose user chose to go ahead), and
        samplers.Cancelled (with no result) when `cancel()` returns True: it is asked between steps
        and between the blocks of each step (mlx_sd.block_evaluation)."""
        if self.files is not None:
            self.files.check()  # model_format.ModelChangedError: a mapped file cut short would be a SIGBUS
        check_precision(self.precision)
        if self.cpu is not None:
            self.cpu.products = self.precision
        self.boundary.cancel = cancel
        self.restore_unet()
        try:
            return generate(self, request, on_progress, cancel, check_memory)
        finally:
            self.boundary.cancel = None

    def estimate(self, request: GenerationRequest) -> Estimate:
        """Peak memory and a rough time for `request` on this pipeline (mlx_sd.estimate), before it runs;
        Pipeline.generate refuses a request whose peak exceeds the machine's memory."""
        component_bytes, per_level = self.sizes
        # low-memory mode drops the text encoders before the UNet runs
        weights = sum(size for name, size in component_bytes.items() if name in ("unet", "vae") or not request.low_memory)
        refiner = refiner_weight_bytes(request, self.library)  # low-memory mode releases the base UNet for it
        weights += max(0, refiner - component_bytes.get("unet", 0)) if request.low_memory else refiner
        device = "cpu" if self.cpu is not None else "gpu"
        threads = self.cpu.threads if self.cpu is not None else 1
        return estimate(self.config, request, weights, per_level, device, threads)

    def release_cached_memory(self) -> None:
        """Hand memory freed since the last run back to the OS (it is faulted in again when next
        used): for an app between runs, which should hold its model, not its last activations."""
        release_free_memory()

    @property
    def codec(self) -> VAECodec:
        """The VAE with scaling, tiling and the float32 fallback (mlx_sd.vae_codec)."""
        if self._codec is None or self._codec.vae is not self.vae:
            self._codec = VAECodec(self.vae, prepare=lambda vae: _prepared(vae, self.cpu, self.boundary))
        return self._codec

    def use_vae(self, choice: str | None) -> VaeChoice | None:
        """Decode with the VAE `choice` names (mlx_sd.vae_swap.vae_path; None: the model's own), swapping
        only the VAE; returns what the infotext names, None for the model's own."""
        path = vae_path(self.library, choice)
        if self._vaes is None:
            self._vaes = VaeSwap(self.config, lambda vae: _prepared(vae, self.cpu, self.boundary))
        self.vae, chosen = self._vaes.select(self.vae, path, self.vae_reader, self.allow_pickle)
        return chosen

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
                    storage = dtype_from_name(self.config.dtype)
                    setattr(self, name, _load(model, self.folder, name, self.dtype, storage, self.cpu, self.boundary))
                    if self._loras is not None:
                        self._loras.reloaded(name, getattr(self, name))
                pairs.append((getattr(self, TOKENIZER_FOR[name]), getattr(self, name)))
            self._prompt_encoder = PromptEncoder(
                [tokenizer for tokenizer, _ in pairs],
                [model for _, model in pairs],
                force_zeros_for_empty_prompt=self.config.force_zeros_for_empty_prompt,
                embeddings=[functools.partial(self._find_embedding, name) for name in self.config.text_encoders],
            )
        return self._prompt_encoder

    @property
    def textual_inversion(self) -> TextualInversion:
        """The library's embeddings for this model's tokenizers (made again when `library` or
        `allow_pickle` changed)."""
        ti = self._textual_inversion
        if ti is None or ti.library is not self.library or ti.allow_pickle != self.allow_pickle:
            tokenizers = {name: getattr(self, TOKENIZER_FOR[name]) for name in self.config.text_encoders}
            self._textual_inversion = TextualInversion(self.library, tokenizers, self.allow_pickle)
        return self._textual_inversion

    def _find_embedding(self, component: str, tokens: Sequence[int], position: int) -> EmbeddingMatch | None:
        return self.textual_inversion.find(component, tokens, position)

    def use_resources(self, request: GenerationRequest) -> ResourcesInUse:
        """Merge the LoRAs `request` asks for (its `loras` and its prompts' tags; none removes every LoRA)
        and find the embeddings its prompts name, those the LoRAs bundle too. A LibraryError or
        LoraError (one line each) leaves the models as they were (PipelineLoras.use says when not).
        Returns the request without its LoRA tags and the infotext's hash entries."""
        stripped, loras = without_lora_tags(request)
        encoder = self.prompt_encoder()  # the text encoders loaded: LoRAs merge into them too
        infotext: dict[str, str] = {}
        notices: list[str] = []
        changed = False
        bundled: dict[str, BundledEmbedding] = {}
        if loras or self._loras is not None:
            if self._loras is None:
                models = {name: getattr(self, name) for name in ("unet", *self.config.text_encoders)}
                merging = merging_for(self.cpu)
                self._loras = PipelineLoras(models, self.config.family, self.config.unet.layers_per_block, merging)
            applied = self._loras.use(loras, self.library, self.allow_pickle)
            changed, notices, bundled = applied.changed, applied.warnings, applied.embeddings
            if applied.hashes:
                infotext["Lora hashes"] = hashes_value(applied.hashes)
        widths = {name: config.hidden_size for name, config in self.config.text_encoders.items()}
        if self.textual_inversion.refresh(widths, bundled) or changed:
            encoder.clear_cache()
        used = self.textual_inversion.used([stripped.prompt, stripped.negative_prompt])
        if used:
            infotext["TI hashes"] = hashes_value(used)
        return ResourcesInUse(stripped, infotext, [*notices, *self.library.notices()])

    def release_text_encoders(self) -> None:
        """Drop the text encoders (and the prompt cache) so MLX can free their memory."""
        self.text_encoder = self.text_encoder_2 = None
        self._prompt_encoder = None
        gc.collect()
        release_free_memory()

    def release_unet(self) -> None:
        """Free the UNet's weights in place (the refiner's low-memory mode); restore_unet reads them again."""
        self.unet.update(tree_map(lambda array: mx.zeros((0,), array.dtype), self.unet.parameters()))
        self.unet_released = True
        gc.collect()
        release_free_memory()

    def restore_unet(self) -> None:
        """Read the UNet's weights again if they were released; a loaded refiner is dropped first."""
        if not self.unet_released:
            return
        self.refiner = None
        gc.collect()
        storage = dtype_from_name(self.config.dtype)
        unet = UNet2DConditionModel(self.config.unet)
        fresh = _load(unet, self.folder, "unet", self.dtype, storage, self.cpu, self.boundary)
        self.unet.update(fresh.parameters())
        self.unet_released = False


def _load(
    model: nn.Module, folder: Path, name: str, dtype: mx.Dtype, storage_dtype: mx.Dtype, cpu: CpuOptions | None,
    boundary: Boundary,
) -> nn.Module:
    """Load `name`'s weights into `model` to compute in `dtype` and prepare it (_prepared); on the CPU
    a text encoder or the UNet may keep a narrower `storage_dtype` (weight_dtype; the UNet computes
    in its input's dtype, a text encoder in its compute_dtype)."""
    weights = dtype if cpu is None else weight_dtype(model, storage_dtype, dtype, cpu)
    if isinstance(model, CLIPTextModel) and weights != dtype:
        model.compute_dtype = dtype
    load_weights(model, weights_file(folder, name), name, weights)
    mx.eval(model.parameters())  # read now: generation should not pay for (or fail on) I/O
    return _prepared(model, cpu, boundary)


def _bytes(model: nn.Module) -> int:
    return sum(array.nbytes for _, array in tree_flatten(model.parameters()))


def _parameters_per_level(unet: UNet2DConditionModel) -> list[int]:
    """The UNet's conv and linear weights by the level of the latents they act on."""
    levels = unet.config.levels
    counts = [0] * levels
    for path, array in tree_flatten(unet.parameters()):
        if array.ndim < 2:
            continue
        block, _, rest = path.partition(".")
        index = int(rest.split(".")[0]) if block in ("down_blocks", "up_blocks") else 0
        level = {"down_blocks": index, "up_blocks": levels - 1 - index, "mid_block": levels - 1}.get(block, 0)
        counts[level] += array.size
    return counts


def _prepared(model: M, cpu: CpuOptions | None, boundary: Boundary) -> M:
    """`model` with the CPU's formulations swapped in (on the CPU), and the UNet and VAE evaluated
    block by block (every device)."""
    if cpu is not None:
        model = accelerate(model, cpu)
    if isinstance(model, (UNet2DConditionModel, AutoencoderKL)):
        model = evaluate_blocks(model, boundary)
    return model
