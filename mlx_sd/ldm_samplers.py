"""The samplers A1111 takes from LDM's DDPM-frame code rather than k-diffusion: DDIM, DDIM CFG++, PLMS,
UniPC, and LCM's. They run on any sigma schedule in the k-diffusion frame; DDIM, DDIM CFG++, PLMS and
UniPC return x in the DDPM frame (see mlx_sd.sampler_loop)."""

from __future__ import annotations

import math
from typing import Protocol

import mlx.core as mx
import numpy as np

from .sampler_loop import (
    Callback, CancelCheck, DenoiserFn, NoiseSampler, NoiseSource, SamplerRun, ancestral_step, need_noise,
)


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
    draw = need_noise(noise, "DDIM with eta > 0", noise_sampler) if eta else None
    run = SamplerRun(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        x = _ddim_step(x, denoised, denoised, sigma, sigma_next, eta, draw)
        run.done(x, denoised)
    return run.finish_in_ddpm_frame(x)


def _ddim_step(
    x: mx.array, denoised: mx.array, renoise_from: mx.array, sigma: float, sigma_next: float, eta: float,
    draw: NoiseSampler | None,
) -> mx.array:
    """One DDIM step to sigma_next: the prediction `denoised`, plus the noise direction of
    `renoise_from` (x - it) / sigma scaled to sigma_down, plus fresh noise of size sigma_up."""
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
    x = denoised + (x - renoise_from) * (sigma_down / sigma)
    return x + draw(sigma, sigma_next) * sigma_up if sigma_up else x


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
    draw = need_noise(noise, "DDIM CFG++ with eta > 0", noise_sampler) if eta else None
    run = SamplerRun(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        negative, positive = denoiser.predictions(x, sigma)
        if negative is None:
            negative = denoised = positive
        else:
            denoised = negative + (positive - negative) * (denoiser.cfg_scale * CFGPP_SCALE)
        x = _ddim_step(x, denoised, negative, sigma, sigma_next, eta, draw)
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
    draw = need_noise(noise, "LCM", noise_sampler)
    run = SamplerRun(sigmas, callback, cancel)
    for sigma, sigma_next in run:
        denoised = denoiser(x, sigma)
        x = denoised
        if sigma_next > 0:
            x = x + draw(sigma, sigma_next) * sigma_next
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
    run = SamplerRun(sigmas, callback, cancel)
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
    run = SamplerRun(sigmas, callback, cancel)
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
        if step < order:  # the first steps ramp the order up
            step_order = step
        else:
            step_order = min(order, total + 1 - step) if lower_order_final else order
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
