"""k-diffusion's samplers (docs/facts.md §4.4), A1111's Restart, and the registry of A1111's 20 samplers.

The contract they all keep and the loop they share are in mlx_sd.sampler_loop; DDIM, DDIM CFG++,
PLMS, UniPC and LCM are in mlx_sd.ldm_samplers, DPM fast and DPM adaptive in mlx_sd.dpm_solver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import numpy as np
from numpy.polynomial import polynomial as P

from .dpm_solver import dpm_solver_range, sample_dpm_adaptive, sample_dpm_fast
from .ldm_samplers import sample_ddim, sample_ddim_cfgpp, sample_lcm, sample_plms, sample_unipc
from .sampler_loop import (  # noqa: F401  (Cancelled, Step: part of this module's interface)
    Callback, CancelCheck, Cancelled, DenoiserFn, NoiseSampler, NoiseSource, Sampler, SamplerRun, Step,
    ancestral_step, checked_sigmas, need_noise,
)
from .schedules import (
    SCHEDULES, NoiseSchedule, ScheduleFn, ddim, exponential, karras, karras_between, lcm, schedule_by_name,
    sigma_range, uniform, unipc_time_uniform,
)


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
    run = SamplerRun(sigmas, callback, cancel)
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
    draw = need_noise(noise, "Euler a", noise_sampler)
    run = SamplerRun(sigmas, callback, cancel)
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
    run = SamplerRun(sigmas, callback, cancel)
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
    run = SamplerRun(sigmas, callback, cancel)
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
    draw = need_noise(noise, "DPM++ 2M SDE", noise_sampler)
    run = SamplerRun(sigmas, callback, cancel)
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
    draw = need_noise(noise, "DPM++ SDE", noise_sampler)
    run = SamplerRun(sigmas, callback, cancel)
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
    run = SamplerRun(sigmas, callback, cancel)
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
    run = SamplerRun(sigmas, callback, cancel)
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
    draw = need_noise(noise, "DPM2 a", noise_sampler)
    run = SamplerRun(sigmas, callback, cancel)
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
    draw = need_noise(noise, "DPM++ 2S a", noise_sampler)
    run = SamplerRun(sigmas, callback, cancel)
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
    draw = need_noise(noise, "DPM++ 3M SDE", noise_sampler)
    run = SamplerRun(sigmas, callback, cancel)
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
    draw = need_noise(noise, "Restart", noise_sampler) if len(pairs) > len(main) - 1 else None
    run = SamplerRun(main, callback, cancel, pairs=pairs)
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


def sampler_and_schedule(sampler: str, schedule: str) -> tuple[str, str]:
    """The sampler and schedule labels for a sampler name that may combine both ("DPM++ 2M Karras")
    and a schedule given apart: one given apart (not "Automatic") wins, as in A1111's API."""
    name, named_schedule = split_sampler_name(sampler)
    if schedule.strip().lower() in ("", "automatic"):
        return name, named_schedule
    return name, schedule


def sigmas_for(
    sampler: str, schedule: str, steps: int, noise_schedule: NoiseSchedule, sdxl: bool = False
) -> np.ndarray:
    """The sigma schedule for a sampler and schedule name ("Automatic" = the sampler's A1111 default).
    `sdxl` picks the SDXL variant of schedules tuned per family (Align Your Steps)."""
    info = sampler_by_name(sampler)
    chosen = schedule_by_name(schedule)
    if info.discard_penultimate_sigma:
        steps += 1
    if chosen.function is None:
        sigmas = info.default_schedule(noise_schedule, steps)
    else:
        sigmas = chosen.sigmas(noise_schedule, steps, sdxl)
    if info.discard_penultimate_sigma:
        sigmas = np.append(sigmas[:-2], sigmas[-1])
    if info.function in (sample_dpm_fast, sample_dpm_adaptive):
        dpm_solver_range(checked_sigmas(sigmas), info.name)  # refused here, before any work
    return sigmas
