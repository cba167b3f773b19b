"""Samplers in the k-diffusion formulation (docs/facts.md §4.4) and the A1111 name registry.

Every sampler has one signature: it takes a denoiser `D(x, sigma) -> x0` (mlx_sd.denoiser wraps the
UNet and CFG into one), the starting latent `x` in the k-diffusion frame (x = x0 + sigma * noise,
so txt2img starts at unit noise times sigmas[0]) and a sigma schedule (mlx_sd.schedules). It runs
len(sigmas) - 1 steps and returns the latent to decode: x at the last sigma, moved to the DDPM
frame x / sqrt(1 + sigma_end^2), which is x itself when the schedule ends at 0.

Stochastic samplers draw fresh standard-normal noise shaped like x from `noise()` (mlx_sd.noise
gives each image its own seeded stream). After each step `callback(Step)` reports progress; before
each step `cancel()` is asked and True raises `Cancelled`, so no partial result escapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator, Protocol

import mlx.core as mx
import numpy as np

from .schedules import SCHEDULES, NoiseSchedule, ScheduleFn, ddim, exponential, karras, lcm, schedule_by_name, uniform

DenoiserFn = Callable[[mx.array, float], mx.array]
NoiseSource = Callable[[], mx.array]


class Cancelled(Exception):
    """Sampling was stopped by its cancel callable; there is no result."""


@dataclass(frozen=True)
class Step:
    """Progress after one sampler step."""

    step: int  # 1-based
    total: int
    sigma: float  # noise level of `x` after this step
    x: mx.array  # the current latent (k-diffusion frame)
    denoised: mx.array  # the model's prediction of the clean latent at this step (for previews)


Callback = Callable[[Step], None]
CancelCheck = Callable[[], bool]


class Sampler(Protocol):
    def __call__(
        self,
        denoiser: DenoiserFn,
        x: mx.array,
        sigmas: np.ndarray,
        *,
        noise: NoiseSource | None = None,
        callback: Callback | None = None,
        cancel: CancelCheck | None = None,
    ) -> mx.array: ...


class _Run:
    """The loop shared by all samplers: yields (sigma, sigma_next) per step, checks for
    cancellation before each step, evaluates and reports after it."""

    def __init__(self, sigmas: np.ndarray, callback: Callback | None, cancel: CancelCheck | None):
        self.sigmas = [float(s) for s in np.asarray(sigmas, dtype=np.float64).reshape(-1)]
        if not self.sigmas:
            raise ValueError("sigmas is empty: expected at least the final sigma")
        if any(s <= 0 for s in self.sigmas[:-1]) or self.sigmas[-1] < 0 or any(
            a < b for a, b in zip(self.sigmas, self.sigmas[1:])
        ):
            raise ValueError(f"sigmas must be non-increasing, positive but for a final 0, got {self.sigmas}")
        self.total = len(self.sigmas) - 1
        self.callback, self.cancel = callback, cancel
        self.index = 0

    def __iter__(self) -> Iterator[tuple[float, float]]:
        for self.index in range(self.total):
            if self.cancel is not None and self.cancel():
                raise Cancelled(f"cancelled before step {self.index + 1} of {self.total}")
            yield self.sigmas[self.index], self.sigmas[self.index + 1]

    def previous_sigma(self) -> float | None:
        return self.sigmas[self.index - 1] if self.index > 0 else None

    def done(self, x: mx.array, denoised: mx.array) -> None:
        # evaluating here keeps the lazy graph one step deep and makes cancellation take effect
        mx.eval(x, denoised)
        if self.callback is not None:
            self.callback(Step(self.index + 1, self.total, self.sigmas[self.index + 1], x, denoised))

    def finish(self, x: mx.array) -> mx.array:
        sigma_end = self.sigmas[-1]
        return x if sigma_end == 0 else x * (1.0 / math.sqrt(1.0 + sigma_end**2))


def _need_noise(noise: NoiseSource | None, sampler: str) -> NoiseSource:
    if noise is None:
        raise ValueError(f"{sampler} adds fresh noise at each step: pass noise=<callable returning N(0, 1) like x>")
    return noise


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step sigma -> sigma_next into a deterministic step down to sigma_down and fresh
    noise of size sigma_up, with sigma_down^2 + sigma_up^2 = sigma_next^2."""
    if not eta or sigma_next == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def sample_euler(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
) -> mx.array:
    """Euler steps on the probability-flow ODE dx/dsigma = (x - D) / sigma."""
    run = _Run(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        x = x + (x - denoised) * ((sigma_next - sigma) / sigma)
        run.done(x, denoised)
    return run.finish(x)


def sample_euler_ancestral(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    eta: float = 1.0,
) -> mx.array:
    """Euler step down to sigma_down, then fresh noise of size sigma_up ("Euler a")."""
    noise = _need_noise(noise, "Euler a")
    run = _Run(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + (x - denoised) * ((sigma_down - sigma) / sigma)
        if sigma_next > 0:
            x = x + noise() * sigma_up
        run.done(x, denoised)
    return run.finish(x)


def sample_heun(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
) -> mx.array:
    """Heun's method: an Euler predictor corrected with the slope at its end; the step to
    sigma = 0 stays a plain Euler step (one model call)."""
    run = _Run(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        d = (x - denoised) / sigma
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - denoiser(x_2, sigma_next)) / sigma_next
            x = x + (d + d_2) * (0.5 * dt)
        run.done(x, denoised)
    return run.finish(x)


def sample_dpmpp_2m(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
) -> mx.array:
    """DPM-Solver++(2M): exponential-integrator steps in lambda = -log sigma, second order from
    the previous step's prediction."""
    run = _Run(sigmas, callback, cancel)
    old_denoised = None
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            ratio = sigma_next / sigma
            d = denoised
            if old_denoised is not None:
                h = math.log(sigma / sigma_next)
                r = math.log(run.previous_sigma() / sigma) / h
                d = denoised * (1 + 1 / (2 * r)) - old_denoised * (1 / (2 * r))
            x = x * ratio + d * (1 - ratio)
        old_denoised = denoised
        run.done(x, denoised)
    return run.finish(x)


def sample_dpmpp_2m_sde(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    eta: float = 1.0,
    solver_type: str = "midpoint",
) -> mx.array:
    """DPM-Solver++(2M) SDE. k-diffusion and A1111 draw its noise from a Brownian tree; here it
    comes from `noise()` (i.i.d. per step), so A1111 images are not reproduced bit for bit."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    noise = _need_noise(noise, "DPM++ 2M SDE")
    run = _Run(sigmas, callback, cancel)
    old_denoised, h_last = None, None
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            eta_h = eta * h
            a = -math.expm1(-h - eta_h)  # 1 - e^{-(h + eta h)}
            x = x * (sigma_next / sigma * math.exp(-eta_h)) + denoised * a
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (denoised - old_denoised) * ((a / (-h - eta_h) + 1) / r)
                else:
                    x = x + (denoised - old_denoised) * (0.5 * a / r)
            if eta:
                x = x + noise() * (sigma_next * math.sqrt(-math.expm1(-2 * eta_h)))
            h_last = h
        old_denoised = denoised
        run.done(x, denoised)
    return run.finish(x)


def sample_dpmpp_sde(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    eta: float = 1.0,
) -> mx.array:
    """DPM-Solver++ (stochastic, singlestep, r = 1/2): two model calls per step, the second at the
    log-sigma midpoint. Noise is i.i.d. from `noise()` (A1111: Brownian tree), two draws per step."""
    noise = _need_noise(noise, "DPM++ SDE")
    run = _Run(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised  # the Euler step to sigma = 0
        else:
            sigma_mid = math.sqrt(sigma * sigma_next)
            # stage 1: to the midpoint
            sd, su = ancestral_step(sigma, sigma_mid, eta)
            x_2 = x * (sd / sigma) + denoised * (1 - sd / sigma)
            x_2 = x_2 + noise() * su
            denoised_2 = denoiser(x_2, sigma_mid)
            # stage 2: the full step with the midpoint prediction (fac = 1/(2r) = 1)
            sd, su = ancestral_step(sigma, sigma_next, eta)
            x = x * (sd / sigma) + denoised_2 * (1 - sd / sigma)
            x = x + noise() * su
        run.done(x, denoised)
    return run.finish(x)


def sample_ddim(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    eta: float = 0.0,
) -> mx.array:
    """DDIM in the k-diffusion frame: x <- D + sigma_down * eps + sigma_up * z with eps = (x - D)/sigma.
    Its sigma_eta, rescaled to this frame, is exactly the ancestral split scaled by eta, so eta = 0
    is an Euler step. Used with DDIM's discrete timesteps (`schedules.ddim`) and integer UNet t."""
    if eta:
        noise = _need_noise(noise, "DDIM with eta > 0")
    run = _Run(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = denoised + (x - denoised) * (sigma_down / sigma)
        if sigma_up:
            x = x + noise() * sigma_up
        run.done(x, denoised)
    return run.finish(x)


def sample_lcm(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
) -> mx.array:
    """LCM: jump to the consistency prediction, then re-noise to the next sigma. The denoiser must
    apply LCM's boundary scalings (`Denoiser(..., timesteps="lcm")`)."""
    noise = _need_noise(noise, "LCM")
    run = _Run(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        x = denoised
        if sigma_next > 0:
            x = x + noise() * sigma_next
        run.done(x, denoised)
    return run.finish(x)


# ---------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class SamplerInfo:
    name: str  # A1111's label
    function: Sampler
    default_schedule: ScheduleFn  # what A1111's "Automatic" schedule means for this sampler
    model_calls_per_step: int  # second-order samplers: 2 (1 on a final step to sigma = 0)
    # how the denoiser turns sigma into the UNet timestep: "fractional" (A1111's default),
    # "discrete" (nearest training timestep) or "lcm" (nearest LCM timestep + boundary scalings)
    timesteps: str = "fractional"
    stochastic: bool = False  # draws noise at each step
    aliases: tuple[str, ...] = ()  # A1111's internal names

    @property
    def default_schedule_name(self) -> str | None:
        """The A1111 schedule label that "Automatic" means here; None when the sampler brings its own
        timesteps (DDIM, LCM), which A1111's schedule list does not name."""
        return next((s.name for s in SCHEDULES if s.function is self.default_schedule), None)


SAMPLERS: tuple[SamplerInfo, ...] = (
    SamplerInfo("DPM++ 2M", sample_dpmpp_2m, karras, 1, aliases=("k_dpmpp_2m",)),
    SamplerInfo("DPM++ SDE", sample_dpmpp_sde, karras, 2, stochastic=True, aliases=("k_dpmpp_sde",)),
    SamplerInfo("DPM++ 2M SDE", sample_dpmpp_2m_sde, exponential, 1, stochastic=True, aliases=("k_dpmpp_2m_sde",)),
    SamplerInfo(
        "DPM++ 2M SDE Heun", partial(sample_dpmpp_2m_sde, solver_type="heun"), exponential, 1,
        stochastic=True, aliases=("k_dpmpp_2m_sde_heun",),
    ),
    SamplerInfo(
        "Euler a", sample_euler_ancestral, uniform, 1, stochastic=True, aliases=("k_euler_a", "k_euler_ancestral")
    ),
    SamplerInfo("Euler", sample_euler, uniform, 1, aliases=("k_euler",)),
    SamplerInfo("Heun", sample_heun, uniform, 2, aliases=("k_heun",)),
    SamplerInfo("DDIM", sample_ddim, ddim, 1, timesteps="discrete"),
    SamplerInfo("LCM", sample_lcm, lcm, 1, timesteps="lcm", stochastic=True, aliases=("k_lcm",)),
)


def sampler_by_name(name: str) -> SamplerInfo:
    """A sampler by its A1111 label or internal name, case-insensitively ("euler a", "k_dpmpp_2m")."""
    key = str(name).strip().lower()
    for info in SAMPLERS:
        if key == info.name.lower() or key in info.aliases:
            return info
    allowed = ", ".join(info.name for info in SAMPLERS)
    raise ValueError(f"sampler {name!r} is not known; expected one of: {allowed}")


def split_sampler_name(name: str) -> tuple[str, str]:
    """Split A1111's pre-1.9 combined names ("DPM++ 2M Karras") into (sampler, schedule label);
    a plain sampler name gives (name, "Automatic"). Known samplers come back under their canonical
    label; an unknown prefix is returned as written so the caller can report it."""
    text = " ".join(str(name).split())
    try:
        return sampler_by_name(text).name, "Automatic"
    except ValueError:
        pass
    for schedule in sorted(SCHEDULES[1:], key=lambda s: -len(s.name)):
        suffix = " " + schedule.name.lower()
        if text.lower().endswith(suffix) and len(text) > len(suffix):
            prefix = text[: -len(suffix)]
            try:
                prefix = sampler_by_name(prefix).name
            except ValueError:
                pass
            return prefix, schedule.name
    return text, "Automatic"


def sigmas_for(sampler: str, schedule: str, steps: int, noise_schedule: NoiseSchedule) -> np.ndarray:
    """The sigma schedule for a sampler and schedule name ("Automatic" = the sampler's A1111 default)."""
    info = sampler_by_name(sampler)
    function = schedule_by_name(schedule).function or info.default_schedule
    return function(noise_schedule, steps)
