"""The SDXL refiner, with A1111 1.6's semantics: the base model runs the first model calls of the
sigma schedule and the refiner the rest, from the base's latents with the same noise stream and, for
multistep samplers, the same history (the sampler never notices: its denoiser changes model).

A1111 counts its denoiser's calls and switches once `calls / steps` reaches `Refiner switch at`, so
the refiner takes over at call ceil(switch * steps): 16 of 20 at 0.8. The refiner is a model of the
`sdxl-refiner` family refining an `sdxl` one; anything else is refused before work starts. It loads
at the first switch and stays with the base pipeline for later runs; in low-memory mode the base's
UNet is released before it loads, and comes back (the refiner going first) when the base is next
needed. Infotext: `Refiner` (A1111's "name [hash]") and `Refiner switch at`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import mlx.core as mx

from .config import ModelConfig
from .infotext import model_hash, model_name
from .library import Library, LibraryError
from .model_format import read_config
from .model_library import folder_size
from .request import GenerationRequest, RequestError
from .stepwise_conditioning import StepwiseDenoiser, stepwise

if TYPE_CHECKING:
    from .pipeline import Pipeline

BASE_FAMILY = "sdxl"
REFINER_FAMILY = "sdxl-refiner"


class DenoiserLike(Protocol):
    cfg_scale: float

    def __call__(self, x: mx.array, sigma: float) -> mx.array: ...

    def predictions(self, x: mx.array, sigma: float) -> tuple[mx.array | None, mx.array]: ...


# the refiner pipeline -> its denoisers for the request, by last model call (prompt editing)
MakeDenoisers = Callable[["Pipeline"], list[tuple[int, DenoiserLike]]]


def refiner_folder(name: str, library: Library) -> Path:
    """Where the refiner named by a request lives: a model folder, or a model of the library by name."""
    return library.find("models", name)


def refiner_weight_bytes(request: GenerationRequest, library: Library) -> int:
    """Bytes of the refiner's files (0 without one, or one not found): what loading it adds to memory."""
    if not request.refiner:
        return 0
    try:
        return folder_size(refiner_folder(request.refiner, library))
    except LibraryError:
        return 0


def check_refiner(
    config: ModelConfig, request: GenerationRequest, library: Library | None = None
) -> ModelConfig | None:
    """The refiner's config when the request names one it can use with `config`'s model; RequestError
    in one line otherwise. Reads only the refiner's model.json."""
    if not request.refiner:
        return None
    if config.family != BASE_FAMILY:
        wanted = f"a refiner for an {BASE_FAMILY} model; this model is {config.family}"
        raise RequestError("refiner", request.refiner, wanted)
    try:
        refiner = read_config(refiner_folder(request.refiner, library or Library()))
    except (ValueError, OSError) as exc:
        raise RequestError("refiner", request.refiner, f"an {REFINER_FAMILY} model folder ({exc})") from None
    if refiner.family != REFINER_FAMILY:
        wanted = f"a model of the {REFINER_FAMILY} family; this one is {refiner.family}"
        raise RequestError("refiner", request.refiner, wanted)
    return refiner


def switch_call(steps: int, switch: float) -> int:
    """The model call (0-based) from which the refiner denoises."""
    return min(steps, math.ceil(round(switch * steps, 9)))  # rounded: 0.8 * 20 is 16, not 16.000000000000004


def refiner_parameters(config: ModelConfig, request: GenerationRequest, library: Library) -> dict[str, str]:
    """The infotext keys of a request's refiner (none without one)."""
    refiner = check_refiner(config, request, library)
    if refiner is None:
        return {}
    name = model_name(refiner) or refiner_folder(request.refiner, library).name
    short_hash = f" [{model_hash(refiner.source.sha256)}]" if refiner.source.sha256 else ""
    return {"Refiner": name + short_hash, "Refiner switch at": f"{request.refiner_switch:g}"}


class Refinement:
    """The refiner of one generation: `switching(base)` wraps a batch's base denoiser."""

    def __init__(self, pipe: "Pipeline", request: GenerationRequest, steps: int, make: MakeDenoisers):
        self.pipe, self.make = pipe, make
        self.folder = refiner_folder(request.refiner, pipe.library)
        self.low_memory = request.low_memory
        self.switch = switch_call(steps, request.refiner_switch)
        self._denoisers: list[tuple[int, DenoiserLike]] | None = None

    def switching(self, base: DenoiserLike) -> "SwitchingDenoiser":
        """The denoiser of one batch: `base` (a fresh one per batch), then the refiner's."""
        batch_refiner: DenoiserLike | None = None

        def refiner() -> DenoiserLike:
            nonlocal batch_refiner
            if batch_refiner is None:
                batch_refiner = stepwise(self._refiner_denoisers())
                if isinstance(batch_refiner, StepwiseDenoiser):
                    batch_refiner.calls = self.switch  # a prompt edit counts the calls of the whole run
            return batch_refiner

        return SwitchingDenoiser(base, self.switch, self._base_ready, refiner)

    def _base_ready(self) -> None:
        if self.pipe.unet_released:
            self._denoisers = None  # the refiner goes first (Pipeline.restore_unet drops it)
            self.pipe.restore_unet()

    def _refiner_denoisers(self) -> list[tuple[int, DenoiserLike]]:
        if self._denoisers is None:
            from .pipeline import Pipeline  # the pipeline module imports the generation that imports this

            if self.low_memory:
                self.pipe.release_unet()
            refiner = self.pipe.refiner
            if refiner is None or refiner.folder != self.folder:
                self.pipe.refiner = None
                refiner = Pipeline.load(
                    self.folder, dtype=self.pipe.dtype, precision=self.pipe.precision, library=self.pipe.library
                )
                self.pipe.refiner = refiner
            self._denoisers = self.make(refiner)
            if self.low_memory:
                refiner.release_text_encoders()
        return self._denoisers


class SwitchingDenoiser:
    """The base denoiser for the first `switch` model calls, the refiner's from then on."""

    def __init__(
        self, base: DenoiserLike, switch: int, base_ready: Callable[[], None], refiner: Callable[[], DenoiserLike]
    ):
        self.base, self.switch, self.base_ready, self.refiner = base, switch, base_ready, refiner
        self.calls = 0

    @property
    def cfg_scale(self) -> float:
        return self.base.cfg_scale

    def _next(self) -> DenoiserLike:
        self.calls += 1
        if self.calls > self.switch:
            return self.refiner()
        self.base_ready()
        return self.base

    def __call__(self, x: mx.array, sigma: float) -> mx.array:
        return self._next()(x, sigma)

    def predictions(self, x: mx.array, sigma: float) -> tuple[mx.array | None, mx.array]:
        return self._next().predictions(x, sigma)
