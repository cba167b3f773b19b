"""DPM fast and DPM adaptive: k-diffusion's DPM-Solver (Lu et al. 2022) in t = -log sigma, with its
noise prediction, fixed or PID-controlled step sizes and k-diffusion's ancestral noise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .sampler_loop import (
    Callback, CancelCheck, DenoiserFn, NoiseSampler, NoiseSource, SamplerRun, ancestral_step, checked_sigmas,
    need_noise,
)


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


def dpm_solver_range(sigmas: list[float], sampler: str) -> tuple[float, float]:
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
    sigma_max, sigma_min = dpm_solver_range(values, "DPM fast")
    nfe = len(values) - 1
    draw = need_noise(noise, "DPM fast", noise_sampler) if eta else None
    m = nfe // 3 + 1
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    ts = np.linspace(-math.log(sigma_max), -math.log(sigma_min), m + 1)
    run = SamplerRun(np.exp(-ts), callback, cancel)
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
    sigma_max, sigma_min = dpm_solver_range(values, "DPM adaptive")
    draw = need_noise(noise, "DPM adaptive", noise_sampler) if eta else None
    run = SamplerRun(values, callback, cancel)
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
