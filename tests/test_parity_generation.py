"""End to end: Pipeline.generate against the diffusers pipeline on the tiny random models of every family.

Each tiny diffusers folder (tests/tiny_models.py) is converted with our converter at float32 and loaded
with Pipeline.load at float32; the same folder runs through diffusers (reference) on the CPU.
Both get the same initial noise and the scheduler that reference.schedulers names for our
sampler + schedule, and the final images must agree within 1/255 (float32 pixels in [0, 1], compared
before our 8-bit rounding). Run with -s to print the table of max abs pixel errors.

What makes the two runs comparable:
- Initial noise: the request's `latents` are unit noise that our samplers scale by sigmas[0]; diffusers
  scales its latents by the scheduler's `init_noise_sigma`, in the DDPM frame for DPM-Solver, DDIM and
  LCM. `SchedulerMatch.initial_noise_scale` is that start in our (k-diffusion) frame, so our request
  carries z * initial_noise_scale / sigmas[0] and diffusers z.
- UNet timesteps: where diffusers' native configuration feeds other timesteps than our denoiser
  (DPM++ 2M with Karras sigmas: diffusers rounds them, A1111 and we do not), the scheduler is pinned to
  our sigmas and timesteps (`engine_match`); the table says "pinned" for those and for schedules
  diffusers cannot express natively.
- Random draws: our noise is seeded per image (mlx_sd.noise.ImageNoise: initial noise, then the VAE
  posterior sample for img2img, then the sampler's draws). diffusers' draws in its schedulers, its VAE
  posterior and its img2img noise are replaced by the same arrays, so the stochastic samplers (Euler a,
  DPM++ 2M SDE, LCM) are compared too. DPM++ SDE cannot be: diffusers' DPMSolverSDEScheduler draws
  Brownian-tree noise through torchsde at points of its own choosing; tests/test_samplers.py checks
  its formulas instead.
- img2img strength: we follow A1111 (docs/facts.md §4.6): strength s runs int(min(s, 0.999) * steps) + 1 steps
  of the full schedule; diffusers runs int(s * steps). Our strength s therefore equals diffusers'
  `diffusers_strength(s, steps)`, one step more than diffusers at the same s (tested both ways).
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator


import mlx.core as mx
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline
from diffusers.models.autoencoders import vae as diffusers_vae
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as sd_img2img
from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as sdxl_img2img
from PIL import Image

import mlx_sd.generation
from convert import ConvertOptions, convert_model
from mlx_sd.config import ModelConfig, NoiseScheduleConfig
from mlx_sd.brownian import BrownianNoise, philox_randn
from mlx_sd.noise import ImageNoise
from mlx_sd.pipeline import Pipeline
from reference import ReferencePipeline
from reference.schedulers import SchedulerMatch, diffusers_scheduler, scheduler_noise
from mlx_sd.request import GenerationRequest
from mlx_sd.samplers import SamplerInfo, sampler_by_name, sigmas_for
from mlx_sd.schedules import SCHEDULES, NoiseSchedule, img2img_sigmas

pytestmark = [
    pytest.mark.slow,  # about a minute of CPU for the whole file
    # diffusers' schedulers build numpy arrays from torch tensors the numpy-2 way it deprecates
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]

TOLERANCE = 1 / 255
SIZE = 64  # pixels: latents are 8 x 8
STEPS = 4  # DPM++ 2M's second-order step runs; Uniform and Simple are native in diffusers at 4 steps
SEED = 1234
PROMPT = "a red cube on a wooden table, studio light"
NEGATIVE = "blurry, low quality"
CPU = torch.device("cpu")
FAMILY = {"sd1": "SD1 (eps)", "sd2-v": "SD2 (v)", "sdxl": "SDXL", "sdxl-refiner": "SDXL refiner"}
RESULTS: list[tuple[str, ...]] = []


# ---------------------------------------------------------------------------------------------
# The cases


@dataclass(frozen=True)
class Case:
    kind: str  # tests/tiny_models.py kind
    sampler: str
    schedule: str = "Automatic"
    cfg: float = 5.0
    negative: str = NEGATIVE
    strength: float | None = None  # img2img when set
    steps: int = STEPS

    @property
    def id(self) -> str:
        mode = "txt2img" if self.strength is None else f"img2img{self.strength:g}"
        neg = "" if self.negative else "-empty-negative"
        return f"{self.kind}-{mode}-{self.sampler}-{self.schedule}-cfg{self.cfg:g}-{self.steps}steps{neg}"


def distinct_schedules(sampler: str, steps: int = STEPS) -> list[str]:
    """The schedules that give `sampler` different sigmas at `steps` (Automatic, Uniform and Normal
    often coincide: only the first is kept)."""
    noise = NoiseSchedule.from_config(NoiseScheduleConfig())
    seen: list[np.ndarray] = []
    kept = []
    for schedule in SCHEDULES:
        sigmas = sigmas_for(sampler, schedule.name, steps, noise)
        if not any(len(s) == len(sigmas) and np.allclose(s, sigmas, rtol=1e-9, atol=0) for s in seen):
            seen.append(sigmas)
            kept.append(schedule.name)
    return kept


def ends_at_zero(sampler: str, schedule: str) -> bool:
    noise = NoiseSchedule.from_config(NoiseScheduleConfig())
    return float(sigmas_for(sampler, schedule, STEPS, noise)[-1]) == 0.0


# Every deterministic sampler with every schedule diffusers can run for it, on SD1. KL Optimal ends at
# sigma_min, as in A1111, where diffusers' multistep solver always finishes at 0: that pair has no diffusers
# equivalent (the schedule is checked in tests/test_schedules.py, the sampler against k-diffusion in
# tests/test_samplers_kdiffusion.py).
SD1_SCHEDULES = [
    Case("sd1", sampler, schedule)
    for sampler in ("Euler", "Heun", "DPM++ 2M", "DDIM")
    for schedule in distinct_schedules(sampler)
    if sampler != "DPM++ 2M" or ends_at_zero(sampler, schedule)
] + [Case("sd1", "LCM", steps=1)]  # one LCM step draws no noise
# Stochastic samplers with diffusers' draws replaced by ours.
SD1_STOCHASTIC = [
    Case("sd1", "Euler a"),
    Case("sd1", "DPM++ 2M SDE"),
    Case("sd1", "DPM++ 2M SDE Heun", "Karras"),
    Case("sd1", "LCM"),
]
OTHER_TXT2IMG = [
    Case("sd1", "Euler", cfg=1.0),  # no negative branch, in both
    Case("sd1", "DPM++ 2M", cfg=1.0),
    Case("sd2-v", "Euler"),
    Case("sd2-v", "DPM++ 2M"),
    Case("sd2-v", "DDIM"),
    Case("sd2-v", "Euler a"),
    Case("sdxl", "Euler"),
    Case("sdxl", "DPM++ 2M", negative=""),  # SDXL: an empty negative prompt is zeros
    Case("sdxl", "DDIM"),
    Case("sdxl", "Euler a", "SGM Uniform", cfg=1.0, steps=2),  # the SDXL Turbo recipe
]
IMG2IMG = [
    Case("sd1", "Euler", strength=0.5),
    Case("sd1", "DPM++ 2M", strength=0.3),
    Case("sd1", "DDIM", strength=0.5),
    Case("sd1", "Euler a", strength=0.75),
    Case("sd1", "Euler", cfg=1.0, strength=0.5),
    Case("sd2-v", "Euler", strength=0.5),
    Case("sdxl", "Euler", strength=0.5),
    Case("sdxl-refiner", "Euler", strength=0.5),
    Case("sdxl-refiner", "DPM++ 2M", strength=0.3),
    Case("sdxl-refiner", "Euler a", cfg=1.0, strength=0.75),
]


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """torch's thread pool is far slower than one thread on these tiny tensors when the CPU is shared
    (25 s against 0.6 s for one 4-step SD1 run on two busy cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
    if RESULTS:
        header = ("family", "mode", "sampler", "schedule", "CFG", "diffusers", "max abs pixel error")
        widths = [max(len(row[i]) for row in (header, *RESULTS)) for i in range(len(header))]
        print()
        for row in (header, tuple("-" * w for w in widths), *RESULTS):
            print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")


class Models:
    """Each kind converted to our format (float32) and loaded on both sides, on first use."""

    def __init__(self, tiny_models: Any, root: Path):
        self.tiny_models, self.root = tiny_models, root
        self.loaded: dict[str, tuple[Pipeline, ReferencePipeline]] = {}
        self._img2img: dict[str, ReferencePipeline] = {}

    def __call__(self, kind: str) -> tuple[Pipeline, ReferencePipeline]:
        if kind not in self.loaded:
            source = self.tiny_models.diffusers(kind)
            ours = convert_model(source, self.root / kind, ConvertOptions(dtype="float32")).output
            self.loaded[kind] = (
                Pipeline.load(ours, dtype="float32"),
                ReferencePipeline.load(source, dtype="float32", device="cpu"),
            )
        return self.loaded[kind]

    def img2img(self, kind: str) -> ReferencePipeline:
        """diffusers' img2img pipeline over the kind's components (the refiner's own pipeline is one)."""
        if kind not in self._img2img:
            reference = self(kind)[1]
            pipe = reference.pipeline
            if isinstance(pipe, StableDiffusionXLImg2ImgPipeline):
                pass
            elif reference.is_sdxl:
                pipe = StableDiffusionXLImg2ImgPipeline(
                    **pipe.components, requires_aesthetics_score=False, force_zeros_for_empty_prompt=True
                )
            else:
                pipe = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
            self._img2img[kind] = ReferencePipeline(pipe, CPU)
        return self._img2img[kind]


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models(tiny_models, tmp_path_factory.mktemp("parity"))


@pytest.fixture
def float_pixels(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Our decoded images as float32 in [0, 1], captured before the 8-bit rounding."""
    captured: list[np.ndarray] = []
    to_image = mlx_sd.generation.to_image

    def capture(pixels: np.ndarray) -> Image.Image:
        captured.append(np.asarray(pixels, dtype=np.float32).copy())
        return to_image(pixels)

    monkeypatch.setattr(mlx_sd.generation, "to_image", capture)
    return captured


# ---------------------------------------------------------------------------------------------
# Helpers


def engine_match(config: ModelConfig, info: SamplerInfo, schedule: str, steps: int) -> SchedulerMatch:
    """The diffusers scheduler for our sampler + schedule, fed the UNet timesteps our denoiser feeds."""
    match = diffusers_scheduler(info.name, schedule, steps, config.noise_schedule, config.prediction_type)
    if match.timesteps != info.timesteps:
        noise = NoiseSchedule.from_config(config.noise_schedule)
        quantize = info.timesteps != "fractional"
        match = dataclasses.replace(
            match, exact=False, timesteps=info.timesteps,
            unet_timesteps=noise.sigma_to_t(match.sigmas[:-1], quantize=quantize),
        )
    return match


def diffusers_strength(strength: float, steps: int) -> float:
    """The diffusers img2img strength that runs the steps A1111 runs for `strength`:
    A1111 int(min(s, 0.999) * steps) + 1 steps, diffusers int(s * steps) (both from the end)."""
    runs = int(min(strength, 0.999) * steps) + 1
    return min((runs + 0.5) / steps, 1.0)


def case_noise(case: Case) -> np.ndarray:
    """Unit normal initial noise (1, 4, h, w), different per case."""
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    return rng.standard_normal((1, 4, SIZE // 8, SIZE // 8)).astype(np.float32)


def init_image() -> Image.Image:
    """A smooth, colourful 64 x 64 picture."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    rgb = np.stack([x, y, 0.5 + 0.4 * np.sin(6 * x + 3 * y)], axis=-1)
    return Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB")


def nchw(array: mx.array, shape: tuple[int, ...]) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(array).transpose(0, 3, 1, 2).copy())
    assert tuple(tensor.shape) == tuple(shape), f"diffusers asked for noise of shape {shape}, ours is {tuple(tensor.shape)}"
    return tensor


def fake_randn(draw: Callable[[tuple[int, ...]], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def randn_tensor(shape: Any, generator: Any = None, device: Any = None, dtype: Any = None, **_: Any) -> torch.Tensor:
        return draw(tuple(shape)).to(dtype=dtype or torch.float32)

    return randn_tensor


def record(case: Case, match: SchedulerMatch, error: float) -> None:
    mode = "txt2img" if case.strength is None else f"img2img {case.strength:g}"
    schedule = case.schedule if case.schedule == match.schedule else f"{case.schedule} (= {match.schedule})"
    if case.steps != STEPS:
        schedule += f", {case.steps} steps"
    RESULTS.append((
        FAMILY[case.kind], mode, case.sampler, schedule, f"{case.cfg:g}",
        "native" if match.exact else "pinned", f"{error:.1e}",
    ))


def run_case(case: Case, models: Models, float_pixels: list[np.ndarray], monkeypatch: pytest.MonkeyPatch) -> float:
    """Run the case through both pipelines; returns the max abs pixel error."""
    pipe, reference = models(case.kind)
    config = pipe.config
    assert config.noise_schedule == NoiseScheduleConfig(), "the cases were chosen for the standard noise schedule"
    info = sampler_by_name(case.sampler)
    match = engine_match(config, info, case.schedule, case.steps)
    z = case_noise(case)
    image = init_image() if case.strength is not None else None

    # ours
    latents = z if image is not None else z * np.float32(match.initial_noise_scale / match.sigmas[0])
    request = GenerationRequest(
        prompt=PROMPT, negative_prompt=case.negative, width=SIZE, height=SIZE, steps=case.steps,
        cfg_scale=case.cfg, sampler=case.sampler, schedule=case.schedule, seed=SEED, latents=latents,
        init_image=image, strength=0.75 if case.strength is None else case.strength,
    )
    totals: list[int] = []
    result = pipe.generate(request, on_progress=lambda p: totals.append(p.total))
    ours = float_pixels[-1][None]
    assert np.array_equal(np.asarray(result.images[0]), np.round(np.clip(ours[0], 0, 1) * 255).astype(np.uint8))

    # diffusers, drawing our noise
    latent_shape = (SIZE // 8, SIZE // 8, config.vae.latent_channels)
    noise = ImageNoise([SEED], latent_shape)
    noise.initial()  # replaced by `latents` on our side too
    draws = lambda shape: nchw(noise(), shape)  # noqa: E731
    scheduler_draws = draws
    if info.brownian:  # A1111's SDE samplers: the steps' draws come from the image's Brownian tree
        sigmas = match.sigmas if image is None else img2img_sigmas(match.sigmas, case.strength)
        tree = BrownianNoise([SEED], sigmas, latent_shape, philox_randn)
        steps = iter([tree(a, b) for a, b in zip(sigmas, sigmas[1:]) if b > 0])
        scheduler_draws = lambda shape: nchw(next(steps, mx.zeros((1, *latent_shape))), shape)  # noqa: E731
    with scheduler_noise(scheduler_draws):
        if image is None:
            theirs = reference.generate(
                PROMPT, case.negative, SIZE, SIZE, case.steps, case.cfg, latents=z, scheduler=match.make(), seed=SEED
            )
        else:
            # the VAE posterior sample, then the img2img noise (our `latents`), then the sampler's
            monkeypatch.setattr(diffusers_vae, "randn_tensor", fake_randn(draws))
            for module in (sd_img2img, sdxl_img2img):
                monkeypatch.setattr(module, "randn_tensor", fake_randn(lambda shape: torch.from_numpy(z)))
            expected_steps = int(min(case.strength, 0.999) * case.steps) + 1
            assert totals and set(totals) == {expected_steps}, "our img2img runs A1111's number of steps"
            theirs = models.img2img(case.kind).generate(
                PROMPT, case.negative, SIZE, SIZE, case.steps, case.cfg, scheduler=match.make(),
                image=image, strength=diffusers_strength(case.strength, case.steps), seed=SEED,
            )
    assert ours.shape == theirs.shape == (1, SIZE, SIZE, 3)
    assert theirs.std() > 0.05, "a near-constant image would make the comparison meaningless"
    error = float(np.abs(ours - theirs).max())
    record(case, match, error)
    return error


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("case", SD1_SCHEDULES + SD1_STOCHASTIC + OTHER_TXT2IMG + IMG2IMG, ids=lambda c: c.id)
def test_images_match_diffusers(case: Case, models: Models, float_pixels, monkeypatch):
    assert run_case(case, models, float_pixels, monkeypatch) < TOLERANCE


def test_every_sampler_and_schedule_is_covered_or_has_no_diffusers_equivalent():
    """The parity cases above cover every deterministic sampler with every distinct schedule; what is
    left has no diffusers scheduler that computes it (tests/test_samplers.py checks the formulas)."""
    covered = {(c.sampler, c.schedule) for c in SD1_SCHEDULES}
    for sampler in ("Euler", "Heun", "DPM++ 2M", "DDIM"):
        for schedule in distinct_schedules(sampler):
            if sampler == "DPM++ 2M" and not ends_at_zero(sampler, schedule):
                continue
            assert (sampler, schedule) in covered
            assert diffusers_scheduler(sampler, schedule, STEPS).scheduler_class is not None
    for schedule in ("Karras", "Exponential", "SGM Uniform", "Simple"):
        assert diffusers_scheduler("LCM", schedule, STEPS).scheduler_class is None  # LCM's own timesteps only
    assert "torchsde" in " ".join(diffusers_scheduler("DPM++ SDE", "Karras", STEPS).notes)


def test_diffusers_at_the_same_strength_runs_one_step_less(models: Models, float_pixels, monkeypatch):
    """Documents the strength mapping: A1111's (ours) starts one sigma higher than diffusers' at the
    same strength, so the images differ; at `diffusers_strength` they match (test above)."""
    case = Case("sd1", "Euler", strength=0.5)
    assert run_case(case, models, float_pixels, monkeypatch) < TOLERANCE
    RESULTS.pop()
    pipe = models("sd1")[0]
    match = engine_match(pipe.config, sampler_by_name("Euler"), "Automatic", STEPS)
    noise = ImageNoise([SEED], (SIZE // 8, SIZE // 8, 4))
    noise.initial()
    z = torch.from_numpy(case_noise(case))
    monkeypatch.setattr(diffusers_vae, "randn_tensor", fake_randn(lambda shape: nchw(noise(), shape)))
    monkeypatch.setattr(sd_img2img, "randn_tensor", fake_randn(lambda shape: z))
    same = models.img2img("sd1").generate(
        PROMPT, NEGATIVE, SIZE, SIZE, STEPS, 5.0, scheduler=match.make(), image=init_image(), strength=0.5, seed=SEED
    )
    assert np.abs(float_pixels[-1][None] - same).max() > 10 * TOLERANCE
    assert diffusers_strength(0.5, 4) == 0.875 and diffusers_strength(1.0, 4) == 1.0
