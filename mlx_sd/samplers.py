"""Samplers in the k-diffusion formulation (sd_facts 4.5) and the A1111 name registry.

Every sampler has one signature: it takes a denoiser `D(x, sigma) -> x0` (mlx_sd.denoiser wraps the
UNet and CFG into one), the starting latent `x` in the k-diffusion frame (x = x0 + sigma * noise,
so txt2img starts at unit noise times sigmas[0]) and a sigma schedule (mlx_sd.schedules). It runs
len(sigmas) - 1 steps and returns the latent to decode: x at the last sigma, moved to the DDPM
frame x / sqrt(1 + sigma_end^2), which is x itself when the schedule ends at 0.

Samplers from k-diffusion (all but DDIM, DDIM CFG++, PLMS, UniPC and LCM) return x in the
k-diffusion frame, as A1111 decodes it; those that follow LDM's DDPM-frame updates return x / sqrt(1 +
sigma_end^2). The two agree whenever the schedule ends at 0.

Stochastic samplers draw their noise through one interface, k-diffusion's noise sampler
`noise_sampler(sigma, sigma_next)` -> standard normal shaped like x. By default it is `IndependentNoise`
over `noise()` (mlx_sd.noise gives each image its own seeded stream: fresh draws whatever the step); an
SDE sampler may be given a Brownian-tree sampler instead. After each step `callback(Step)` reports
progress; before each step `cancel()` is asked and True raises `Cancelled`, so no partial result escapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator, Protocol

import mlx.core as mx
import numpy as np
from numpy.polynomial import polynomial as P

from .schedules import (
    SCHEDULES, NoiseSchedule, ScheduleFn, ddim, exponential, karras, karras_between, lcm, schedule_by_name,
    sigma_range, uniform, unipc_time_uniform,
)

DenoiserFn = Callable[[mx.array, float], mx.array]
NoiseSource = Callable[[], mx.array]
NoiseSampler = Callable[[float, float], mx.array]  # (sigma, sigma_next) -> N(0, 1) like x


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
        noise_sampler: NoiseSampler | None = None,
    ) -> mx.array: ...


def checked_sigmas(sigmas: np.ndarray) -> list[float]:
    """The schedule as floats, refused unless non-empty, non-increasing and positive but for a final 0."""
    values = [float(s) for s in np.asarray(sigmas, dtype=np.float64).reshape(-1)]
    if not values:
        raise ValueError("sigmas is empty: expected at least the final sigma")
    if any(s <= 0 for s in values[:-1]) or values[-1] < 0 or any(a < b for a, b in zip(values, values[1:])):
        raise ValueError(f"sigmas must be non-increasing, positive but for a final 0, got {values}")
    return values


class _Run:
    """The loop shared by all samplers: yields (sigma, sigma_next) per step, checks for
    cancellation before each step, evaluates and reports after it. `pairs` replaces the
    consecutive pairs of `sigmas` for samplers that go back up (Restart)."""

    def __init__(
        self,
        sigmas: np.ndarray,
        callback: Callback | None,
        cancel: CancelCheck | None,
        pairs: list[tuple[float, float]] | None = None,
    ):
        self.sigmas = checked_sigmas(sigmas)
        self.pairs = pairs if pairs is not None else list(zip(self.sigmas, self.sigmas[1:]))
        self.total = len(self.pairs)
        self.callback, self.cancel = callback, cancel
        self.index = 0

    def __iter__(self) -> Iterator[tuple[float, float]]:
        for self.index in range(self.total):
            self.check_cancel(self.index + 1, self.total)
            yield self.pairs[self.index]

    def check_cancel(self, step: int, total: int) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"cancelled before step {step} of {total}")

    def previous_sigma(self) -> float | None:
        return self.pairs[self.index - 1][0] if self.index > 0 else None

    def done(self, x: mx.array, denoised: mx.array) -> None:
        self.report(self.index + 1, self.total, self.pairs[self.index][1], x, denoised)

    def report(self, step: int, total: int, sigma: float, x: mx.array, denoised: mx.array) -> None:
        # evaluating here keeps the lazy graph one step deep and makes cancellation take effect
        mx.eval(x, denoised)
        if self.callback is not None:
            self.callback(Step(step, total, sigma, x, denoised))

    def finish(self, x: mx.array) -> mx.array:
        """x as k-diffusion returns it: in its own frame at the last sigma."""
        return x

    def finish_in_ddpm_frame(self, x: mx.array) -> mx.array:
        """x moved to the DDPM frame (LDM's DDIM/PLMS/UniPC end at sigma(t=0) and return x_t there)."""
        sigma_end = self.sigmas[-1]
        return x if sigma_end == 0 else x * (1.0 / math.sqrt(1.0 + sigma_end**2))


@dataclass(frozen=True)
class IndependentNoise:
    """A1111's default noise sampler: the next draw of the image's noise stream, whatever the step."""

    source: NoiseSource

    def __call__(self, sigma: float, sigma_next: float) -> mx.array:
        return self.source()


def _need_noise(noise: NoiseSource | None, sampler: str, noise_sampler: NoiseSampler | None = None) -> NoiseSampler:
    """The noise sampler a stochastic sampler draws from: the one given, else independent draws of `noise`."""
    if noise_sampler is not None:
        return noise_sampler
    if noise is None:
        raise ValueError(f"{sampler} adds fresh noise at each step: pass noise=<callable returning N(0, 1) like x>")
    return IndependentNoise(noise)


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
    noise_sampler: NoiseSampler | None = None,
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
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
) -> mx.array:
    """Euler step down to sigma_down, then fresh noise of size sigma_up ("Euler a")."""
    draw = _need_noise(noise, "Euler a", noise_sampler)
    run = _Run(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + (x - denoised) * ((sigma_down - sigma) / sigma)
        if sigma_next > 0:
            x = x + draw(sigma, sigma_next) * sigma_up
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
    noise_sampler: NoiseSampler | None = None,
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
    noise_sampler: NoiseSampler | None = None,
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
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    solver_type: str = "midpoint",
) -> mx.array:
    """DPM-Solver++(2M) SDE. A1111 draws its noise from a Brownian tree (pass `noise_sampler`);
    by default it is independent per step."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    draw = _need_noise(noise, "DPM++ 2M SDE", noise_sampler)
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
                x = x + draw(sigma, sigma_next) * (sigma_next * math.sqrt(-math.expm1(-2 * eta_h)))
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
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
) -> mx.array:
    """DPM-Solver++ (stochastic, singlestep, r = 1/2): two model calls per step, the second at the
    log-sigma midpoint. Two draws per step (A1111: from a Brownian tree, pass `noise_sampler`)."""
    draw = _need_noise(noise, "DPM++ SDE", noise_sampler)
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
            x_2 = x_2 + draw(sigma, sigma_mid) * su
            denoised_2 = denoiser(x_2, sigma_mid)
            # stage 2: the full step with the midpoint prediction (fac = 1/(2r) = 1)
            sd, su = ancestral_step(sigma, sigma_next, eta)
            x = x * (sd / sigma) + denoised_2 * (1 - sd / sigma)
            x = x + draw(sigma, sigma_next) * su
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
    noise_sampler: NoiseSampler | None = None,
    eta: float = 0.0,
) -> mx.array:
    """DDIM in the k-diffusion frame: x <- D + sigma_down * eps + sigma_up * z with eps = (x - D)/sigma.
    Its sigma_eta, rescaled to this frame, is exactly the ancestral split scaled by eta, so eta = 0
    is an Euler step. Used with DDIM's discrete timesteps (`schedules.ddim`) and integer UNet t."""
    draw = _need_noise(noise, "DDIM with eta > 0", noise_sampler) if eta else None
    run = _Run(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = denoised + (x - denoised) * (sigma_down / sigma)
        if sigma_up:
            x = x + draw(sigma, sigma_next) * sigma_up
        run.done(x, denoised)
    return run.finish_in_ddpm_frame(x)


class GuidedDenoiser(Protocol):
    """A denoiser that also gives its two predictions before CFG (mlx_sd.denoiser.Denoiser)."""

    cfg_scale: float

    def __call__(self, x: mx.array, sigma: float) -> mx.array: ...

    def predictions(self, x: mx.array, sigma: float) -> tuple[mx.array | None, mx.array]: ...


CFGPP_SCALE = 1 / 12.5  # A1111 maps CFG 0..12.5 onto CFG++'s guidance 0..1


def sample_ddim_cfgpp(
    denoiser: GuidedDenoiser,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 0.0,
) -> mx.array:
    """DDIM with CFG++ (Chung et al. 2024) as A1111 runs it: the prediction guided at cfg_scale / 12.5,
    renoised along the negative prompt's noise instead of the guided one. Without CFG (cfg_scale <= 1
    computes no negative prediction) it is DDIM."""
    draw = _need_noise(noise, "DDIM CFG++ with eta > 0", noise_sampler) if eta else None
    run = _Run(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        negative, positive = denoiser.predictions(x, sigma)
        if negative is None:
            negative = denoised = positive
        else:
            denoised = negative + (positive - negative) * (denoiser.cfg_scale * CFGPP_SCALE)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = denoised + (x - negative) * (sigma_down / sigma)
        if sigma_up:
            x = x + draw(sigma, sigma_next) * sigma_up
        run.done(x, denoised)
    return run.finish_in_ddpm_frame(x)


def sample_lcm(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> mx.array:
    """LCM: jump to the consistency prediction, then re-noise to the next sigma. The denoiser must
    apply LCM's boundary scalings (`Denoiser(..., timesteps="lcm")`)."""
    draw = _need_noise(noise, "LCM", noise_sampler)
    run = _Run(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        x = denoised
        if sigma_next > 0:
            x = x + draw(sigma, sigma_next) * sigma_next
        run.done(x, denoised)
    return run.finish(x)


def sample_lms(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    noise_sampler: NoiseSampler | None = None,
    order: int = 4,
) -> mx.array:
    """Linear multistep in sigma: the slopes of the last `order` steps weighted by the integrals of
    their Lagrange polynomials over the step (k-diffusion integrates them numerically; exactly here)."""
    run = _Run(sigmas, callback, cancel)
    slopes: list[mx.array] = []
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        slopes = [(x - denoised) / sigma] + slopes[: order - 1]  # newest first
        knots = run.sigmas[run.index - len(slopes) + 1: run.index + 1][::-1]  # sigma_i, sigma_{i-1}, ...
        for slope, weight in zip(slopes, lagrange_step_weights(knots, sigma_next)):
            x = x + slope * weight
        run.done(x, denoised)
    return run.finish(x)


def lagrange_step_weights(knots: list[float], end: float) -> list[float]:
    """Integral from knots[0] to `end` of each knot's Lagrange basis polynomial over `knots`."""
    weights = []
    for j, knot in enumerate(knots):
        others = knots[:j] + knots[j + 1:]
        basis = P.polyfromroots(others) / np.prod([knot - other for other in others]) if others else np.ones(1)
        antiderivative = P.polyint(basis)
        weights.append(float(P.polyval(end, antiderivative) - P.polyval(knots[0], antiderivative)))
    return weights


def _dpm2_step(denoiser: DenoiserFn, x: mx.array, d: mx.array, sigma: float, sigma_to: float) -> mx.array:
    """DPM-Solver-2 from sigma to sigma_to: the slope at the log-sigma midpoint drives the whole step."""
    sigma_mid = math.exp(0.5 * (math.log(sigma) + math.log(sigma_to)))
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = (x_2 - denoiser(x_2, sigma_mid)) / sigma_mid
    return x + d_2 * (sigma_to - sigma)


def sample_dpm_2(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> mx.array:
    """DPM2 (k-diffusion): DPM-Solver-2 steps; the step to sigma = 0 is an Euler step."""
    run = _Run(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        d = (x - denoised) / sigma
        x = x + d * (sigma_next - sigma) if sigma_next == 0 else _dpm2_step(denoiser, x, d, sigma, sigma_next)
        run.done(x, denoised)
    return run.finish(x)


def sample_dpm_2_ancestral(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
) -> mx.array:
    """DPM2 a: a DPM-Solver-2 step down to sigma_down, then fresh noise of size sigma_up."""
    draw = _need_noise(noise, "DPM2 a", noise_sampler)
    run = _Run(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        d = (x - denoised) / sigma
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            x = _dpm2_step(denoiser, x, d, sigma, sigma_down) + draw(sigma, sigma_next) * sigma_up
        run.done(x, denoised)
    return run.finish(x)


def sample_dpmpp_2s_ancestral(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
) -> mx.array:
    """DPM++ 2S a: a DPM-Solver++(2S) step (second model call at the log-sigma midpoint) down to
    sigma_down, then fresh noise of size sigma_up."""
    draw = _need_noise(noise, "DPM++ 2S a", noise_sampler)
    run = _Run(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = x + (x - denoised) * ((sigma_down - sigma) / sigma)
        else:
            sigma_mid = math.sqrt(sigma * sigma_down)
            x_2 = x * (sigma_mid / sigma) + denoised * (1 - sigma_mid / sigma)
            x = x * (sigma_down / sigma) + denoiser(x_2, sigma_mid) * (1 - sigma_down / sigma)
        if sigma_next > 0:
            x = x + draw(sigma, sigma_next) * sigma_up
        run.done(x, denoised)
    return run.finish(x)


def sample_dpmpp_3m_sde(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
) -> mx.array:
    """DPM-Solver++(3M) SDE: third order from the last two steps' predictions (A1111: Brownian-tree
    noise, pass `noise_sampler`)."""
    draw = _need_noise(noise, "DPM++ 3M SDE", noise_sampler)
    run = _Run(sigmas, callback, cancel)
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            h_eta = h * (eta + 1)
            x = x * math.exp(-h_eta) + denoised * -math.expm1(-h_eta)
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + d1 * phi_2 - d2 * (phi_2 / h_eta - 0.5)
            elif h_1 is not None:
                x = x + (denoised - denoised_1) * (phi_2 / (h_1 / h))
            if eta:
                x = x + draw(sigma, sigma_next) * (sigma_next * math.sqrt(-math.expm1(-2 * h * eta)))
        # k-diffusion shifts its history after the final step too (h keeps the last step's value)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
        run.done(x, denoised)
    return run.finish(x)


def _dpm_solver_step(
    denoiser: DenoiserFn,
    x: mx.array,
    eps: mx.array,
    t: float,
    t_next: float,
    order: int,
    r1: float | None = None,
    cache: dict[float, mx.array] | None = None,
) -> mx.array:
    """One DPM-Solver-1/2/3 step in t = -log sigma (Lu et al. 2022, noise prediction), given eps at t.
    Order 2 takes its intermediate point at r1 * h (1/2 by default), order 3 at h/3 and 2h/3.
    `cache` keeps eps at intermediate times, so a 2nd- and a 3rd-order step from the same x share
    their call at h/3 (DPM adaptive)."""
    cache = {} if cache is None else cache
    h = t_next - t
    sigma_next = math.exp(-t_next)
    x_1 = x - eps * (sigma_next * math.expm1(h))
    if order == 1:
        return x_1

    def eps_at(u: mx.array, s: float) -> mx.array:
        if s not in cache:
            sigma_s = math.exp(-s)
            cache[s] = (u - denoiser(u, sigma_s)) / sigma_s
        return cache[s]

    r1 = r1 if r1 is not None else (0.5 if order == 2 else 1 / 3)
    s1 = t + r1 * h
    eps_1 = eps_at(x - eps * (math.exp(-s1) * math.expm1(r1 * h)), s1)
    if order == 2:
        return x_1 - (eps_1 - eps) * (sigma_next / (2 * r1) * math.expm1(h))
    r2 = 2 / 3
    s2 = t + r2 * h
    sigma_s2 = math.exp(-s2)
    u2 = x - eps * (sigma_s2 * math.expm1(r2 * h)) - (eps_1 - eps) * (
        sigma_s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1)
    )
    eps_2 = eps_at(u2, s2)
    return x_1 - (eps_2 - eps) * (sigma_next / r2 * (math.expm1(h) / h - 1))


def _ancestral_target(t: float, t_next: float, t_end: float, eta: float) -> tuple[float, float]:
    """DPM-Solver's ancestral split in t: the time to solve to (not past t_end) and the noise size."""
    if not eta:
        return t_next, 0.0
    sigma_down, _ = ancestral_step(math.exp(-t), math.exp(-t_next), eta)
    t_to = min(t_end, -math.log(sigma_down))
    return t_to, math.sqrt(max(math.exp(-2 * t_next) - math.exp(-2 * t_to), 0.0))


def _dpm_solver_range(sigmas: list[float], sampler: str) -> tuple[float, float]:
    """(sigma_max, sigma_min) for DPM fast/adaptive: the first sigma and the smallest positive one."""
    positive = [s for s in sigmas if s > 0]
    if len(positive) < 2 and sigmas[-1] == 0:
        raise ValueError(f"{sampler} needs two positive sigmas to solve between, got {sigmas}")
    return sigmas[0], min(positive)


def sample_dpm_fast(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
) -> mx.array:
    """DPM-Solver-Fast (k-diffusion): len(sigmas) - 1 model calls spent on evenly spaced steps in
    -log sigma from sigmas[0] to the smallest positive sigma, third order but for the last one or two.
    Ends at that sigma (no step to 0), as in k-diffusion. A1111 runs it with eta = 1."""
    values = checked_sigmas(sigmas)
    sigma_max, sigma_min = _dpm_solver_range(values, "DPM fast")
    nfe = len(values) - 1
    draw = _need_noise(noise, "DPM fast", noise_sampler) if eta else None
    m = nfe // 3 + 1
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    ts = np.linspace(-math.log(sigma_max), -math.log(sigma_min), m + 1)
    run = _Run(np.exp(-ts), callback, cancel)
    for i, _ in enumerate(run):
        t, t_next = float(ts[i]), float(ts[i + 1])
        t_to, sigma_up = _ancestral_target(t, t_next, float(ts[-1]), eta)
        sigma = math.exp(-t)
        denoised = denoiser(x, sigma)
        x = _dpm_solver_step(denoiser, x, (x - denoised) / sigma, t, t_to, orders[i])
        if draw is not None:  # even when sigma_up is 0, as k-diffusion, so later draws stay in step
            x = x + draw(sigma, math.exp(-t_next)) * sigma_up
        run.done(x, denoised)
    return run.finish(x)


@dataclass
class _StepSizeController:
    """k-diffusion's PID step-size controller (I only, by default): the error history and the step h."""

    h: float
    order: float
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    accept_safety: float = 0.81
    inverse_errors: list[float] | None = None

    def propose(self, error: float) -> bool:
        """Scale h for the next try from this error; True when the step just taken is accepted."""
        inverse = 1 / (error + 1e-8)
        if self.inverse_errors is None:
            self.inverse_errors = [inverse] * 3
        self.inverse_errors[0] = inverse
        b1 = (self.pcoeff + self.icoeff + self.dcoeff) / self.order
        b2 = -(self.pcoeff + 2 * self.dcoeff) / self.order
        b3 = self.dcoeff / self.order
        e = self.inverse_errors
        factor = 1 + math.atan(e[0] ** b1 * e[1] ** b2 * e[2] ** b3 - 1)  # a soft limit on the change
        accept = factor >= self.accept_safety
        if accept:
            e[2], e[1] = e[1], e[0]
        self.h *= factor
        return accept


def sample_dpm_adaptive(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    noise_sampler: NoiseSampler | None = None,
    eta: float = 1.0,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
) -> mx.array:
    """DPM-Solver-23 with adaptive steps (k-diffusion's defaults) from sigmas[0] to the smallest
    positive sigma: each try compares a 2nd- and a 3rd-order solution and a PID controller sizes the
    next step. The step count follows from the tolerances; `len(sigmas) - 1` only bounds the
    progress total shown until it is exceeded. A1111 runs it with eta = 1."""
    values = checked_sigmas(sigmas)
    sigma_max, sigma_min = _dpm_solver_range(values, "DPM adaptive")
    draw = _need_noise(noise, "DPM adaptive", noise_sampler) if eta else None
    run = _Run(values, callback, cancel)
    t_end = -math.log(sigma_min)
    s = -math.log(sigma_max)
    x_prev = x
    controller = _StepSizeController(h_init, 1.5 if eta else order)
    tries = 0
    while s < t_end - 1e-5:
        tries += 1
        run.check_cancel(tries, max(tries, run.total))
        t = min(t_end, s + controller.h)
        t_to, sigma_up = _ancestral_target(s, t, t_end, eta)
        sigma = math.exp(-s)
        denoised = denoiser(x, sigma)
        eps = (x - denoised) / sigma
        cache: dict[float, mx.array] = {}
        x_low = _dpm_solver_step(denoiser, x, eps, s, t_to, order - 1, 1 / 3 if order == 3 else None, cache)
        x_high = _dpm_solver_step(denoiser, x, eps, s, t_to, order, cache=cache)
        delta = mx.maximum(atol, rtol * mx.maximum(mx.abs(x_low), mx.abs(x_prev)))
        error = float(mx.sqrt(mx.mean(mx.square((x_low - x_high) / delta))))
        if controller.propose(error):
            x_prev = x_low
            x = x_high + draw(sigma, math.exp(-t)) * sigma_up if draw is not None else x_high
            s = t
        run.report(tries, max(tries, run.total), math.exp(-s), x, denoised)
    return run.finish(x)


def restart_segments(sigmas: list[float]) -> tuple[list[float], list[tuple[float, float]]]:
    """A1111's automatic Restart plan: from 20 steps on, a Karras schedule of n - k*m steps (k = 9,
    m = 1; from 36 steps k = n // 4, m = 2) between sigmas[0] and the last positive sigma, and m
    restarts from the step nearest sigma 0.1 back up to the one nearest sigma 2, each k Karras steps
    down again. Returns the main schedule and every (sigma, sigma_next) step in order."""
    steps = len(sigmas) - 1
    restarts = None
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        main = karras_between(steps - restart_steps * restart_times, sigmas[-2], sigmas[0])
        sigmas = [float(s) for s in main]
        restarts = (restart_steps + 1, restart_times)
    pairs = []
    low = int(np.abs(np.array(sigmas) - 0.1).argmin())
    high = int(np.abs(np.array(sigmas) - 2.0).argmin())
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if restarts and i + 1 == low and high < low:
            segment = [float(s) for s in karras_between(restarts[0], sigmas[low], sigmas[high])[:-1]]
            pairs.extend(list(zip(segment, segment[1:])) * restarts[1])
    return sigmas, pairs


def sample_restart(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> mx.array:
    """Restart sampling (Xu et al. 2023) as A1111 runs it: Heun steps along `restart_segments`; on each
    jump back up from sigma_low to sigma_high, fresh noise of size sqrt(sigma_high^2 - sigma_low^2)."""
    main, pairs = restart_segments(checked_sigmas(sigmas))
    draw = _need_noise(noise, "Restart", noise_sampler) if len(pairs) > len(main) - 1 else None
    run = _Run(main, callback, cancel, pairs=pairs)
    last = None
    for sigma, sigma_next in run:
        if last is not None and last < sigma:
            x = x + draw(last, sigma) * math.sqrt(sigma**2 - last**2)
        denoised = denoiser(x, sigma)
        d = (x - denoised) / sigma
        x_2 = x + d * (sigma_next - sigma)
        if sigma_next == 0:
            x = x_2
        else:
            d_2 = (x_2 - denoiser(x_2, sigma_next)) / sigma_next
            x = x + (d + d_2) * (0.5 * (sigma_next - sigma))
        last = sigma_next
        run.done(x, denoised)
    return run.finish(x)


def sample_plms(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> mx.array:
    """PLMS (LDM, as A1111 runs it): DDIM steps driven by an Adams-Bashforth blend of the last four
    noise predictions; the first step is a pseudo improved Euler step (a second model call at the
    next sigma, skipped when that is 0). In the k-diffusion frame a DDIM step with eps is
    x + (sigma_next - sigma) * eps."""
    run = _Run(sigmas, callback, cancel)
    old_eps: list[mx.array] = []  # newest last, at most three
    for sigma, sigma_next in run:
        eps = (x - denoiser(x, sigma)) / sigma
        if not old_eps:
            eps_prime = eps
            if sigma_next > 0:
                x_next = x + eps * (sigma_next - sigma)
                eps_prime = (eps + (x_next - denoiser(x_next, sigma_next)) / sigma_next) * 0.5
        elif len(old_eps) == 1:
            eps_prime = (eps * 3 - old_eps[-1]) * 0.5
        elif len(old_eps) == 2:
            eps_prime = (eps * 23 - old_eps[-1] * 16 + old_eps[-2] * 5) / 12
        else:
            eps_prime = (eps * 55 - old_eps[-1] * 59 + old_eps[-2] * 37 - old_eps[-3] * 9) / 24
        denoised = x - eps_prime * sigma
        x = x + eps_prime * (sigma_next - sigma)
        old_eps = (old_eps + [eps])[-3:]
        run.done(x, denoised)
    return run.finish_in_ddpm_frame(x)


def unipc_weights(h: float, ratios: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """UniPC's B(h) = h variant ("bh1"), data prediction: the matrix R of powers of the step ratios
    r_k and the vector b the predictor and corrector solve against (Zhao et al. 2023, Alg. 2)."""
    hh = -h
    h_phi_k = math.expm1(hh) / hh - 1
    factorial = 1
    rows, b = [], []
    for i in range(1, len(ratios) + 1):
        rows.append(np.array(ratios, dtype=np.float64) ** (i - 1))
        b.append(h_phi_k * factorial / hh)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return np.stack(rows), np.array(b)


def sample_unipc(
    denoiser: DenoiserFn,
    x: mx.array,
    sigmas: np.ndarray,
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    cancel: CancelCheck | None = None,
    noise_sampler: NoiseSampler | None = None,
    order: int = 3,
    lower_order_final: bool = True,
) -> mx.array:
    """UniPC multistep with A1111's settings (variant bh1, order 3, lower order at the end, data
    prediction): a predictor of the given order in lambda = -log sigma, then a corrector that reuses
    the model call at the predicted point, which also feeds the next step (one call per step). The
    first steps ramp the order up; the last step has no corrector. A step to sigma = 0 (schedules
    that end there) returns the last prediction."""
    run = _Run(sigmas, callback, cancel)
    total = run.total
    history: list[tuple[float, mx.array]] = []  # (lambda, model prediction), newest last
    denoised = None
    for step, (sigma, sigma_next) in enumerate(run, start=1):
        if not history:
            denoised = denoiser(x, sigma)
            history.append((-math.log(sigma), denoised))
        lam_s, m0 = history[-1]
        if sigma_next == 0:
            x = m0
            run.done(x, m0)
            continue
        step_order = min(order, step) if step < order else (min(order, total + 1 - step) if lower_order_final else order)
        use_corrector = step < order or step < total
        lam_t = -math.log(sigma_next)
        h = lam_t - lam_s
        earlier = history[-step_order:-1][::-1]  # the step_order - 1 predictions before m0, newest first
        ratios = [(lam - lam_s) / h for lam, _ in earlier] + [1.0]
        differences = [(m - m0) / r for (_, m), r in zip(earlier, ratios)]
        R, b = unipc_weights(h, ratios)
        x_base = x * (sigma_next / sigma) - m0 * math.expm1(-h)
        x_t = x_base
        if differences:
            rhos = [0.5] if step_order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
            x_t = x_base + sum(d * float(rho) for d, rho in zip(differences, rhos)) * h  # B(h) = -h
        model_t = None
        if use_corrector:
            model_t = denoiser(x_t, sigma_next)
            rhos_c = [0.5] if step_order == 1 else np.linalg.solve(R, b)
            correction = (model_t - m0) * float(rhos_c[-1])
            for d, rho in zip(differences, rhos_c[:-1]):
                correction = correction + d * float(rho)
            x_t = x_base + correction * h
        x = x_t
        denoised = model_t if model_t is not None else m0
        if model_t is not None:
            history = (history + [(lam_t, model_t)])[-order:]
        run.done(x, denoised)
    return run.finish_in_ddpm_frame(x)


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
    # A1111 computes steps + 1 sigmas and drops the next-to-last (DPM2, DPM2 a, DPM++ 3M SDE)
    discard_penultimate_sigma: bool = False
    brownian: bool = False  # A1111 draws its noise from a Brownian tree (k-diffusion's SDE samplers)

    @property
    def default_schedule_name(self) -> str | None:
        """The A1111 schedule label that "Automatic" means here; None when the sampler brings its own
        timesteps (DDIM, PLMS, UniPC, LCM), which A1111's schedule list does not name."""
        return next((s.name for s in SCHEDULES if s.function is self.default_schedule), None)


# A1111's samplers in A1111's order (sd_samplers_kdiffusion, sd_samplers_timesteps, sd_samplers_lcm).
SAMPLERS: tuple[SamplerInfo, ...] = (
    SamplerInfo("DPM++ 2M", sample_dpmpp_2m, karras, 1, aliases=("k_dpmpp_2m",)),
    SamplerInfo("DPM++ SDE", sample_dpmpp_sde, karras, 2, stochastic=True, aliases=("k_dpmpp_sde",), brownian=True),
    SamplerInfo(
        "DPM++ 2M SDE", sample_dpmpp_2m_sde, exponential, 1, stochastic=True, aliases=("k_dpmpp_2m_sde",),
        brownian=True,
    ),
    SamplerInfo(
        "DPM++ 2M SDE Heun", partial(sample_dpmpp_2m_sde, solver_type="heun"), exponential, 1,
        stochastic=True, aliases=("k_dpmpp_2m_sde_heun",), brownian=True,
    ),
    SamplerInfo("DPM++ 2S a", sample_dpmpp_2s_ancestral, karras, 2, stochastic=True, aliases=("k_dpmpp_2s_a",)),
    SamplerInfo(
        "DPM++ 3M SDE", sample_dpmpp_3m_sde, exponential, 1, stochastic=True, aliases=("k_dpmpp_3m_sde",),
        discard_penultimate_sigma=True, brownian=True,
    ),
    SamplerInfo(
        "Euler a", sample_euler_ancestral, uniform, 1, stochastic=True, aliases=("k_euler_a", "k_euler_ancestral")
    ),
    SamplerInfo("Euler", sample_euler, uniform, 1, aliases=("k_euler",)),
    SamplerInfo("LMS", sample_lms, uniform, 1, aliases=("k_lms",)),
    SamplerInfo("Heun", sample_heun, uniform, 2, aliases=("k_heun",)),
    SamplerInfo("DPM2", sample_dpm_2, karras, 2, aliases=("k_dpm_2",), discard_penultimate_sigma=True),
    SamplerInfo(
        "DPM2 a", sample_dpm_2_ancestral, karras, 2, stochastic=True, aliases=("k_dpm_2_a",),
        discard_penultimate_sigma=True,
    ),
    # 3 model calls per outer step: the step count is the model-call budget
    SamplerInfo("DPM fast", sample_dpm_fast, sigma_range, 1, stochastic=True, aliases=("k_dpm_fast",)),
    SamplerInfo("DPM adaptive", sample_dpm_adaptive, sigma_range, 3, stochastic=True, aliases=("k_dpm_ad",)),
    SamplerInfo("Restart", sample_restart, karras, 2, stochastic=True, aliases=("restart",)),
    SamplerInfo("DDIM", sample_ddim, ddim, 1, timesteps="discrete", aliases=("ddim",)),
    SamplerInfo("DDIM CFG++", sample_ddim_cfgpp, ddim, 1, timesteps="discrete", aliases=("ddim_cfgpp",)),
    SamplerInfo("PLMS", sample_plms, ddim, 1, timesteps="discrete", aliases=("plms",)),
    SamplerInfo("UniPC", sample_unipc, unipc_time_uniform, 1, aliases=("unipc",)),
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


def sigmas_for(
    sampler: str, schedule: str, steps: int, noise_schedule: NoiseSchedule, sdxl: bool = False
) -> np.ndarray:
    """The sigma schedule for a sampler and schedule name ("Automatic" = the sampler's A1111 default).
    `sdxl` picks the SDXL variant of schedules tuned per family (Align Your Steps)."""
    info = sampler_by_name(sampler)
    chosen = schedule_by_name(schedule)
    if info.discard_penultimate_sigma:
        steps += 1
    sigmas = chosen.sigmas(noise_schedule, steps, sdxl) if chosen.function else info.default_schedule(noise_schedule, steps)
    if info.discard_penultimate_sigma:
        sigmas = np.append(sigmas[:-2], sigmas[-1])
    if info.function in (sample_dpm_fast, sample_dpm_adaptive):
        _dpm_solver_range(checked_sigmas(sigmas), info.name)  # refused here, before any work
    return sigmas
