"""`Pipeline.generate`: one request -> images, seeds and infotexts (txt2img, img2img, inpainting).

Order of work:
1. `plan`: validate everything and prepare the init image and mask, before any model runs;
2. resolve the seed (-1 = random); image k of the whole run uses seed + k (A1111);
3. encode the prompts once (positive, and negative only when cfg_scale > 1); with `low_memory`
   the text encoders are released before the UNet runs;
4. per batch of `batch_size`: seeded noise (or the request's `latents`), the img2img start point
   (A1111's strength rule: the tail of the full schedule from `schedules.img2img_sigmas`), the
   sampler over the CFG denoiser, progress with a latent preview after every step, then the VAE
   decode and, when inpainting, the composite over the init image.
5. hires fix (mlx_sd.hires): after each batch's first pass, its latents are upscaled and a second,
   img2img-like pass runs at the larger size with fresh per-seed noise, before the VAE decode.

Noise draws per image (its own Philox stream, `noise.ImageNoise`): the first is the initial noise,
the second the VAE posterior sample of the init image (img2img), later ones feed stochastic samplers.
`cancel()` is polled before every step and between stages; a cancelled run raises
`samplers.Cancelled` and returns nothing.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import mlx.core as mx
import numpy as np
from PIL import Image

from .brownian import BrownianNoise, philox_randn
from .composable import ComposableConditioning, blend_parameters, denoiser_for, embedding_blend, prompt_parts
from .config import ModelConfig
from .dash_negative import with_dash_lines_moved
from .denoiser import Conditioning, Denoiser
from .estimate import check_fits, machine_memory
from .hires import HiresPlan, Start, plan_hires, upscaled_start, upscaler_network
from .image_prep import prepare_init_image, prepare_mask, to_image
from .infotext import format_infotext
from .inpaint import BlendedDenoiser, composite, inpainting_concat, repaint_latent_mask
from .library import Library
from .noise import ImageNoise, image_seeds, latents_from_request
from .outpaint import outpainted
from .refiner import Refinement, check_refiner, refiner_parameters
from .request import MAX_SEED, RANDOM_SEED, GenerationRequest, GenerationResult, Progress, RequestError
from .samplers import SAMPLERS, Cancelled, SamplerInfo, Step, sampler_by_name, sigmas_for
from .schedules import SCHEDULES, NoiseSchedule, img2img_sigmas, schedule_by_name
from .sdxl_conditioning import needs_time_ids, time_ids
from .stepwise_conditioning import conditioning_schedule, stepwise
from .variation import seed_variation, variation_parameters, with_resolved_variation_seed

if TYPE_CHECKING:
    from .pipeline import Pipeline

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]
# A1111's "RNG" infotext key: our seeded noise is its platform-independent "NV" generator.
INFOTEXT_EXTRA = {"RNG": "NV"}


@dataclass(frozen=True)
class Plan:
    """A validated request and what is derived from it before any model runs."""

    request: GenerationRequest  # sampler and schedule under their canonical A1111 labels
    sampler: SamplerInfo
    sigmas: np.ndarray  # the noise levels this run steps through (img2img: the schedule's tail)
    init: np.ndarray | None  # (H, W, 3) in [0, 1] at the requested size
    mask: np.ndarray | None  # (H, W) in [0, 1], blurred; 1 = repaint
    hires: HiresPlan | None = None  # hires fix's second pass


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a failure is an allocation that did not fit: Python's MemoryError, or the RuntimeError
    MLX raises when a buffer cannot be allocated ("[metal::malloc] Attempting to allocate ...")."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("allocate" in text or "out of memory" in text)


def random_seed() -> int:
    """A fresh seed from 0 to MAX_SEED: what -1 becomes, and what the app's dice button picks."""
    return secrets.randbelow(MAX_SEED + 1)


def resolve_seed(seed: int) -> int:
    """The seed a run uses: a random one for -1, else the request's (0 stays 0)."""
    return random_seed() if seed == RANDOM_SEED else seed


def _check_clip_skip(config: ModelConfig, clip_skip: int) -> None:
    for name, text_config in config.text_encoders.items():
        deepest = text_config.num_hidden_layers + 2 + text_config.hidden_layer
        if clip_skip > deepest:
            raise RequestError("clip_skip", clip_skip, f"a whole number from 1 to {deepest} for this model's {name}")


def _check_image(name: str, image: object) -> None:
    if image is None:
        return
    if not isinstance(image, Image.Image):
        raise RequestError(name, f"a {type(image).__name__}", "a PIL.Image.Image")
    if image.width < 1 or image.height < 1:
        raise RequestError(name, f"an image of {image.width}x{image.height} pixels", "an image with pixels")


def _prepared(name: str, prepare: Callable[..., np.ndarray], image: Image.Image, *args: int) -> np.ndarray:
    try:
        return prepare(image, *args)
    except (OSError, ValueError) as exc:  # e.g. a truncated file Pillow opened lazily
        raise RequestError(name, f"a {image.mode} image Pillow cannot convert ({exc})", "a readable image") from None


def plan(config: ModelConfig, request: GenerationRequest, library: Library | None = None) -> Plan:
    """Check the request against the rules and this model; RequestError names field, value and rule.
    `library` finds a refiner named by the request (default: the default library folder's)."""
    if not isinstance(request, GenerationRequest):
        raise TypeError(f"expected a GenerationRequest, got {type(request).__name__}")
    _check_image("init_image", request.init_image)
    _check_image("mask", request.mask)
    request.validate(config.vae.downscale)
    if any(request.outpaint):  # outpainting is inpainting on the grown canvas (mlx_sd.outpaint)
        picture = _prepared("init_image", prepare_init_image, request.init_image, request.width, request.height)
        request = outpainted(request, picture)
    try:
        sampler = sampler_by_name(request.sampler)
    except ValueError:
        raise RequestError("sampler", request.sampler, "one of " + ", ".join(s.name for s in SAMPLERS)) from None
    try:
        schedule = schedule_by_name(request.schedule)
    except ValueError:
        raise RequestError("schedule", request.schedule, "one of " + ", ".join(s.name for s in SCHEDULES)) from None
    _check_clip_skip(config, request.clip_skip)
    check_refiner(config, request, library)
    if request.latents is not None and not np.isfinite(np.asarray(request.latents, dtype=np.float64)).all():
        raise RequestError("latents", "an array holding NaN or inf", "finite numbers")
    try:
        sigmas = sigmas_for(
            sampler.name, schedule.name, request.steps, NoiseSchedule.from_config(config.noise_schedule),
            sdxl=config.family.startswith("sdxl"),
        )
    except ValueError as exc:
        raise RequestError("steps", request.steps, f"a step count {sampler.name} can run ({exc})") from None

    init = mask = None
    if request.init_image is not None:
        sigmas = img2img_sigmas(sigmas, request.strength)
        init = _prepared("init_image", prepare_init_image, request.init_image, request.width, request.height)
        if request.mask is not None:
            mask = _prepared("mask", prepare_mask, request.mask, request.width, request.height, request.mask_blur)
    canonical = dataclasses.replace(with_dash_lines_moved(request), sampler=sampler.name, schedule=schedule.name)
    return Plan(canonical, sampler, sigmas, init, mask, plan_hires(config, canonical))


def _infotext_model(pipe: "Pipeline") -> ModelConfig:
    """The config for `Model` / `Model hash`; a model converted without a source name is named after its folder."""
    if pipe.config.source.name:
        return pipe.config
    return dataclasses.replace(pipe.config, source=dataclasses.replace(pipe.config.source, name=pipe.folder.name))


def _check_cancel(cancel: CancelFn | None, where: str) -> None:
    if cancel is not None and cancel():
        raise Cancelled(f"cancelled {where}")


def _conditioning(
    pipe: "Pipeline", request: GenerationRequest, c_concat: mx.array | None
) -> Conditioning | ComposableConditioning:
    """The UNet conditioning for one batch of `batch_size` images."""
    batch = request.batch_size
    encoder = pipe.prompt_encoder()
    parts = prompt_parts(request.prompt)  # `AND`: each part's batch in turn
    prompts = [text for text in parts.texts for _ in range(batch)]
    if request.cfg_scale > 1 or parts.composable:
        negatives = [request.negative_prompt] * len(prompts)
        positive, negative = encoder.encode_for_guidance(prompts, negatives, request.clip_skip)
    else:  # no negative branch at all: the denoiser makes one UNet call of `batch` rows
        positive, negative = encoder.encode(prompts, request.clip_skip), None
    extra: dict[str, mx.array] = {}
    negative_extra: dict[str, mx.array] = {}
    if needs_time_ids(pipe.config):
        size = (request.height, request.width)
        rows = len(prompts)
        extra = {"text_embeds": positive.pooled, "time_ids": time_ids(pipe.config, *size, request.aesthetic_score, rows)}
        if negative is not None:
            negative_extra = {
                "text_embeds": negative.pooled,
                "time_ids": time_ids(pipe.config, *size, request.negative_aesthetic_score, rows),
            }
    conditioning = Conditioning(
        context=positive.context,
        negative_context=None if negative is None else negative.context,
        cfg_scale=request.cfg_scale,
        extra=extra,
        negative_extra=negative_extra,
        c_concat=c_concat,
    )
    if parts.composable and request.and_blend == "embedding":
        return embedding_blend(conditioning, parts.weights, batch)
    if parts.composable:
        return ComposableConditioning.from_guided(conditioning, parts.weights, batch)
    return conditioning


def _conditionings(
    pipe: "Pipeline", request: GenerationRequest, c_concat: mx.array | None
) -> list[tuple[int, Conditioning | ComposableConditioning]]:
    """The conditioning for each stretch of steps: prompt editing and alternation make one per change."""
    return conditioning_schedule(
        request, lambda prompt, negative: _conditioning(
            pipe, dataclasses.replace(request, prompt=prompt, negative_prompt=negative), c_concat
        )
    )


def _denoisers(
    pipe: "Pipeline", conditionings: list[tuple[int, Conditioning | ComposableConditioning]], timesteps: str
) -> list[tuple[int, Denoiser]]:
    """The pipeline's model as a denoiser for each stretch of `conditionings`."""
    config = pipe.config
    noise_schedule = NoiseSchedule.from_config(config.noise_schedule)

    def make(conditioning: Conditioning) -> Denoiser:
        return Denoiser(pipe.unet, noise_schedule, conditioning, config.prediction_type, timesteps, pipe.dtype)

    return [(end, denoiser_for(conditioning, make)) for end, conditioning in conditionings]


def generate(
    pipe: "Pipeline",
    request: GenerationRequest,
    on_progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    check_memory: bool = True,
) -> GenerationResult:
    started = time.perf_counter()
    p = plan(pipe.config, request, pipe.library)
    request = p.request
    if check_memory:  # off only when a user was asked and chose to go ahead (the app)
        check_fits(pipe.config, request, pipe.estimate(request), machine_memory())
    hires_network = None
    if p.hires is not None:  # hires fix: its second pass must fit too, and its upscaler be readable
        if check_memory:
            check_fits(pipe.config, p.hires.request, pipe.estimate(p.hires.request), machine_memory())
        hires_network = upscaler_network(p.hires, pipe.read_upscaler)
    seeds = image_seeds(resolve_seed(request.seed), request.total_images)
    p = dataclasses.replace(p, request=with_resolved_variation_seed(request, random_seed()))
    request = p.request
    if p.hires is not None:  # the second pass bends its noise by the same variation seed
        second = dataclasses.replace(p.hires.request, variation_seed=request.variation_seed)
        p = dataclasses.replace(p, hires=dataclasses.replace(p.hires, request=second))
    model = _infotext_model(pipe)
    vae = pipe.use_vae(request.vae)  # models: swaps only the VAE, before any model runs
    resources = pipe.use_resources(request)  # LoRAs merged, embeddings found (issue 17)
    extra = {
        **INFOTEXT_EXTRA, **blend_parameters(request), **resources.infotext, **(vae.infotext() if vae else {}),
        **refiner_parameters(pipe.config, request, pipe.library),
    }
    infotexts = [  # LoRA tags kept, as A1111
        format_infotext(request, seed, model, {**extra, **variation_parameters(request, index)})
        for index, seed in enumerate(seeds)
    ]
    request = resources.request  # the text encoders never see the tags
    mx.reset_peak_memory()
    timings: dict[str, float] = {}

    if p.init is not None and request.strength == 0:
        image = to_image(p.init)  # nothing to denoise: the input, converted and resized
        timings["total"] = time.perf_counter() - started
        return GenerationResult(
            [image.copy() for _ in seeds], seeds, infotexts, mx.get_peak_memory(), timings, resources.notices
        )

    def timed(stage: str, since: float) -> float:
        now = time.perf_counter()
        timings[stage] = timings.get(stage, 0.0) + now - since
        return now

    _check_cancel(cancel, "before any model ran")
    codec = pipe.codec
    now = time.perf_counter()
    c_concat = None
    if pipe.config.is_inpainting:
        c_concat = inpainting_concat(
            codec, p.init, p.mask, request.height, request.width, request.batch_size, request.vae_tiling
        )
    init_moments = None if p.init is None else codec.encode(mx.array(p.init)[None], request.vae_tiling)
    if c_concat is not None or init_moments is not None:
        now = timed("vae_encode", now)
    conditionings = _conditionings(pipe, request, c_concat)
    # hires fix's prompts are encoded now: low-memory mode releases the text encoders next
    hires_sampler = None if p.hires is None else _hires_sampler(pipe, p, c_concat, on_progress, cancel)
    now = timed("text_encoders", now)
    if request.low_memory:
        pipe.release_text_encoders()
    refinement = None
    if request.refiner:  # the SDXL refiner takes over the schedule's last steps (mlx_sd.refiner)
        refinement = Refinement(
            pipe, request, len(p.sigmas) - 1,
            lambda refiner: _denoisers(refiner, _conditionings(refiner, request, None), p.sampler.timesteps),
        )

    after = 0 if p.hires is None else len(p.hires.sigmas) - 1
    sampler = _BatchSampler(pipe, p, conditionings, init_moments, on_progress, cancel, (0, after), refinement)
    images: list[Image.Image] = []
    for batch_index in range(request.batch_count):
        _check_cancel(cancel, f"before batch {batch_index + 1} of {request.batch_count}")
        batch_seeds = seeds[batch_index * request.batch_size : (batch_index + 1) * request.batch_size]
        latents = sampler(batch_index, batch_seeds)
        now = timed("sampling", now)
        if hires_sampler is not None:
            _check_cancel(cancel, "before the hires pass")
            start = upscaled_start(codec, latents, p.hires, hires_network, request.vae_tiling)
            now = timed("hires_upscale", now)
            latents = hires_sampler(batch_index, batch_seeds, start)
            now = timed("sampling", now)
        _check_cancel(cancel, "before the VAE decode")
        pixels = np.array(codec.decode(latents, request.vae_tiling))
        if p.mask is not None:
            pixels = composite(pixels, p.init, p.mask)
        images.extend(to_image(image) for image in pixels)
        now = timed("vae_decode", now)

    timings["total"] = time.perf_counter() - started
    return GenerationResult(images, seeds, infotexts, mx.get_peak_memory(), timings, resources.notices)


def _hires_sampler(
    pipe: "Pipeline", p: Plan, c_concat: mx.array | None, on_progress: ProgressFn | None, cancel: CancelFn | None
) -> "_BatchSampler":
    """Hires fix's second pass: a sampler over its own plan, with its prompts' schedule (A1111's
    hires rules) and, for inpainting models, the txt2img conditioning at the hires size."""
    assert p.hires is not None
    second = p.hires.request
    if c_concat is not None:
        c_concat = inpainting_concat(
            pipe.codec, None, None, second.height, second.width, second.batch_size, second.vae_tiling
        )
    conditionings = conditioning_schedule(
        second, lambda prompt, negative: _conditioning(
            pipe, dataclasses.replace(second, prompt=prompt, negative_prompt=negative), c_concat
        ), p.request.steps,
    )
    hires_plan = Plan(second, p.hires.sampler, p.hires.sigmas, None, None)
    return _BatchSampler(pipe, hires_plan, conditionings, None, on_progress, cancel, (len(p.sigmas) - 1, 0))


class _BatchSampler:
    """Runs the sampler for one batch: start latent, denoiser (blended when inpainting with an
    ordinary model), progress with previews."""

    def __init__(
        self,
        pipe: "Pipeline",
        p: Plan,
        conditionings: list[tuple[int, Conditioning | ComposableConditioning]],
        init_moments: mx.array | None,
        on_progress: ProgressFn | None,
        cancel: CancelFn | None,
        steps_around: tuple[int, int] = (0, 0),  # steps of other passes before and after this one
        refinement: Refinement | None = None,
    ):
        self.pipe, self.plan, self.init_moments = pipe, p, init_moments
        self.on_progress, self.cancel, self.steps_around = on_progress, cancel, steps_around
        self.refinement = refinement
        config = pipe.config
        self.denoisers = _denoisers(pipe, conditionings, p.sampler.timesteps)
        request = p.request
        factor = config.vae.downscale
        self.latent_shape = (request.height // factor, request.width // factor, config.vae.latent_channels)
        self.repaint = None
        if p.mask is not None and not config.is_inpainting:
            self.repaint = repaint_latent_mask(p.mask, request.height, request.width, factor)

    def __call__(self, batch_index: int, seeds: list[int], start: Start | None = None) -> mx.array:
        """`start` gives the noise-free start latent of a hires pass (after the initial draw)."""
        request, sigmas = self.plan.request, self.plan.sigmas
        first_image = batch_index * request.batch_size
        variation = seed_variation(request, first_image, len(seeds), self.pipe.config.vae.downscale)
        noise = ImageNoise(seeds, self.latent_shape, variation=variation)
        x = noise.initial()  # drawn even when replaced, so later draws do not depend on `latents`
        if request.latents is not None:
            x = latents_from_request(request.latents, self.latent_shape[-1])
        denoiser = stepwise(self.denoisers)
        if self.refinement is not None:
            denoiser = self.refinement.switching(denoiser)
        if start is None and self.init_moments is None:
            x = x * float(sigmas[0])
        else:
            original = start(noise) if start is not None else self.pipe.codec.latents(self.init_moments, noise())
            x = original + x * float(sigmas[0])
            if self.repaint is not None:
                denoiser = BlendedDenoiser(denoiser, original, self.repaint)

        def report(step: Step) -> None:
            if self.on_progress is not None:
                preview = self.pipe.preview.image(step.denoised[0])
                before, after = self.steps_around
                total = before + step.total + after
                self.on_progress(Progress(before + step.step, total, batch_index, request.batch_count, preview))

        # A1111's SDE samplers draw from Brownian trees seeded per image; on an NVIDIA GPU, whose
        # randn the NV generator reproduces, the trees' draws are CUDA's too (mlx_sd.brownian)
        noise_sampler = None
        if self.plan.sampler.brownian:
            noise_sampler = BrownianNoise(seeds, sigmas, self.latent_shape, philox_randn)
        return self.plan.sampler.function(
            denoiser, x, sigmas, noise=noise, callback=report, cancel=self.cancel, noise_sampler=noise_sampler
        )
