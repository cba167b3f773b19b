"""The training noise schedule in the k-diffusion frame, sigma <-> timestep, and sigma schedules.

A sigma schedule is a float64 numpy array of n+1 descending noise levels: a sampler's n steps go
sigmas[i] -> sigmas[i+1]. Every schedule ends at 0 except DDIM's and UniPC's own, which end at
sigma(t=0) as LDM's and diffusers' do (docs/facts.md §4.3, §4.4), and KL Optimal, which A1111 ends at
the model's sigma_min. A1111's "DDIM" schedule label has its own function (`ddim_uniform`), ending at
0. Computations are float64 for exactness; samplers apply the resulting scalars to float32 latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np

from .config import NoiseScheduleConfig

ScheduleFn = Callable[["NoiseSchedule", int], np.ndarray]

KARRAS_RHO = 7.0
LCM_ORIGINAL_STEPS = 50  # LCM's distillation schedule: timesteps 19, 39, ..., 999
BETA_ALPHA = BETA_BETA = 0.6  # A1111's defaults for the Beta schedule's distribution
# Align Your Steps' published 10-step sigmas (NVIDIA's how-to page, as A1111 uses them), per family
AYS_SD1 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """The discrete DDPM schedule a model was trained with, seen as k-diffusion noise levels
    sigma_t = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]), t = 0 .. T-1 (ascending)."""

    alphas_cumprod: np.ndarray = field(repr=False)

    @classmethod
    def from_config(cls, config: NoiseScheduleConfig | None = None) -> "NoiseSchedule":
        config = config or NoiseScheduleConfig()
        steps = config.num_train_timesteps
        if config.beta_schedule == "scaled_linear":
            betas = np.linspace(config.beta_start**0.5, config.beta_end**0.5, steps, dtype=np.float64) ** 2
        elif config.beta_schedule == "linear":
            betas = np.linspace(config.beta_start, config.beta_end, steps, dtype=np.float64)
        else:
            raise ValueError(
                f"beta_schedule {config.beta_schedule!r} is not supported: expected 'scaled_linear' or 'linear'"
            )
        return cls(np.cumprod(1.0 - betas))

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @cached_property
    def sigmas(self) -> np.ndarray:
        return np.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)

    @cached_property
    def log_sigmas(self) -> np.ndarray:
        return np.log(self.sigmas)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: float | np.ndarray, quantize: bool = False) -> np.ndarray:
        """The (fractional) timestep of a noise level, interpolating log sigma between the two
        bracketing training timesteps; `quantize` picks the nearest timestep in log sigma instead."""
        log_sigma = np.log(np.asarray(sigma, dtype=np.float64))
        dists = log_sigma[..., None] - self.log_sigmas
        if quantize:
            return np.abs(dists).argmin(axis=-1).astype(np.float64)
        # last index whose log sigma is <= ours, kept below the final index so `high` exists
        low = np.clip((dists >= 0).sum(axis=-1) - 1, 0, self.num_timesteps - 2)
        high = low + 1
        w = (self.log_sigmas[low] - log_sigma) / (self.log_sigmas[low] - self.log_sigmas[high])
        return low + np.clip(w, 0.0, 1.0)

    def t_to_sigma(self, t: float | np.ndarray) -> np.ndarray:
        """Noise level of a (fractional) timestep: log sigma interpolated linearly in t."""
        t = np.asarray(t, dtype=np.float64)
        low = np.floor(t).astype(np.int64)
        high = np.ceil(t).astype(np.int64)
        w = t - low
        return np.exp((1.0 - w) * self.log_sigmas[low] + w * self.log_sigmas[high])


def _with_zero(sigmas: np.ndarray) -> np.ndarray:
    return np.append(np.asarray(sigmas, dtype=np.float64), 0.0)


def _check_steps(steps: int) -> None:
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")


def uniform(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """A1111 "Uniform" (k-diffusion `get_sigmas`): timesteps evenly spaced from T-1 down to 0."""
    _check_steps(steps)
    t = np.linspace(schedule.num_timesteps - 1, 0, steps)
    return _with_zero(schedule.t_to_sigma(t))


def normal(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """A1111 "Normal": timesteps evenly spaced from t(sigma_max) to t(sigma_min) (the same
    endpoints as Uniform for a training schedule)."""
    _check_steps(steps)
    start, end = schedule.sigma_to_t([schedule.sigma_max, schedule.sigma_min])
    return _with_zero(schedule.t_to_sigma(np.linspace(start, end, steps)))


def sgm_uniform(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """A1111 "SGM Uniform": n+1 evenly spaced timesteps from t(sigma_max) to t(sigma_min) without
    the last (999, 899.1, ..., 99.9 for 10 steps); diffusers' "trailing" spacing rounds these."""
    _check_steps(steps)
    start, end = schedule.sigma_to_t([schedule.sigma_max, schedule.sigma_min])
    return _with_zero(schedule.t_to_sigma(np.linspace(start, end, steps + 1)[:-1]))


def karras(schedule: NoiseSchedule, steps: int, rho: float = KARRAS_RHO) -> np.ndarray:
    """Karras et al. (2022): evenly spaced in sigma^(1/rho) between the model's sigma_max and sigma_min."""
    return karras_between(steps, schedule.sigma_min, schedule.sigma_max, rho)


def karras_between(steps: int, sigma_min: float, sigma_max: float, rho: float = KARRAS_RHO) -> np.ndarray:
    """The Karras schedule between any two noise levels (Restart builds its restart segments with it)."""
    _check_steps(steps)
    ramp = np.linspace(0.0, 1.0, steps)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _with_zero((max_inv + ramp * (min_inv - max_inv)) ** rho)


def exponential(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """Evenly spaced in log sigma between the model's sigma_max and sigma_min."""
    _check_steps(steps)
    return _with_zero(np.exp(np.linspace(np.log(schedule.sigma_max), np.log(schedule.sigma_min), steps)))


def polyexponential(schedule: NoiseSchedule, steps: int, rho: float = 1.0) -> np.ndarray:
    """k-diffusion's polyexponential: log sigma follows ramp^rho from log sigma_max to log sigma_min
    (A1111's rho is 1, which is Exponential)."""
    _check_steps(steps)
    ramp = np.linspace(1.0, 0.0, steps) ** rho
    log_min, log_max = math.log(schedule.sigma_min), math.log(schedule.sigma_max)
    return _with_zero(np.exp(ramp * (log_max - log_min) + log_min))


def kl_optimal(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """A1111 "KL Optimal" (Sabour et al. 2024): evenly spaced in arctan(sigma), n+1 values from
    sigma_max down to sigma_min. A1111 appends no 0, so the last step ends at sigma_min."""
    _check_steps(steps)
    ramp = np.arange(steps + 1) / steps
    return np.tan(ramp * math.atan(schedule.sigma_min) + (1.0 - ramp) * math.atan(schedule.sigma_max))


def align_your_steps(schedule: NoiseSchedule, steps: int, sdxl: bool = False) -> np.ndarray:
    """A1111 "Align Your Steps": the family's published 10-step sigmas, interpolated log-linearly to
    n values (evenly in their index), then 0. The model's own sigma_min/max are not used."""
    _check_steps(steps)
    published = np.array(AYS_SDXL if sdxl else AYS_SD1, dtype=np.float64)
    if steps == len(published):
        return _with_zero(published)
    log_ascending = np.log(published[::-1])
    ramp = np.interp(np.linspace(0, 1, steps), np.linspace(0, 1, len(published)), log_ascending)
    return _with_zero(np.exp(ramp)[::-1])


def ddim_uniform(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """A1111's "DDIM" schedule label: the training sigmas at t = 1, 1 + T//n, ... below T, highest
    first, then 0. When n does not divide T this gives more than n steps (30 -> 31), as in A1111."""
    _check_steps(steps)
    stride = max(schedule.num_timesteps // steps, 1)
    return _with_zero(schedule.sigmas[np.arange(1, schedule.num_timesteps, stride)][::-1])


def beta(schedule: NoiseSchedule, steps: int, a: float = BETA_ALPHA, b: float = BETA_BETA) -> np.ndarray:
    """A1111 "Beta" (Lee et al. 2024): sigma_min + q * (sigma_max - sigma_min) at the Beta(a, b)
    quantiles q of 1, ..., 0 (n evenly spaced levels), then 0."""
    _check_steps(steps)
    quantiles = [beta_quantile(p, a, b) for p in 1.0 - np.linspace(0.0, 1.0, steps)]
    return _with_zero(schedule.sigma_min + np.array(quantiles) * (schedule.sigma_max - schedule.sigma_min))


def beta_quantile(p: float, a: float, b: float) -> float:
    """The inverse of the regularized incomplete beta function I_x(a, b) = p, by bisection (the
    function is monotone in x); exact to float64 at 0 and 1."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(64):
        middle = 0.5 * (low + high)
        if regularized_incomplete_beta(middle, a, b) < p:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) from its continued fraction, evaluated by the modified Lentz method on the side of
    (a + 1) / (a + b + 2) where the fraction converges fast (the symmetry I_x(a,b) = 1 - I_{1-x}(b,a))."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - regularized_incomplete_beta(1.0 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    tiny = 1e-300  # keeps Lentz's ratios away from division by zero

    def nonzero(value: float) -> float:
        return value if abs(value) > tiny else tiny

    c, d = 1.0, 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0))
    fraction = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 / nonzero(1.0 + numerator * d)
            c = nonzero(1.0 + numerator / c)
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    return math.exp(log_front) * fraction / a


def simple(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """A1111/Comfy "Simple": every (T/n)-th training sigma from the top, sigma_{T-1-floor(i*T/n)}."""
    _check_steps(steps)
    T = schedule.num_timesteps
    index = T - 1 - np.floor(np.arange(steps) * (T / steps)).astype(np.int64)
    return _with_zero(schedule.sigmas[index])


def leading_timesteps(num_timesteps: int, steps: int, offset: int = 1) -> np.ndarray:
    """diffusers "leading" spacing, descending: k * (T // n) + offset (10 steps: 901, ..., 101, 1)."""
    _check_steps(steps)
    t = np.arange(steps - 1, -1, -1) * (num_timesteps // steps) + offset
    return np.clip(t, 0, num_timesteps - 1)


def trailing_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """diffusers "trailing" spacing, descending: round(T - k*T/n) - 1 (4 steps: 999, 749, 499, 249)."""
    _check_steps(steps)
    return np.round(np.arange(num_timesteps, 0, -num_timesteps / steps)).astype(np.int64) - 1


def ddim_timesteps(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """LDM/A1111 DDIM timesteps, descending: 1 + k * (T // n) (20 steps: 951, 901, ..., 1)."""
    return leading_timesteps(schedule.num_timesteps, steps, offset=1)


def ddim(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """DDIM's schedule: the sigmas of its discrete timesteps, ending at sigma(t=0) (alphas_cumprod[0]),
    not at 0, as LDM and diffusers (`set_alpha_to_one=False`) do."""
    return np.append(schedule.sigmas[ddim_timesteps(schedule, steps)], schedule.sigma_min)


def sigma_range(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """The model's sigma_max down to its sigma_min in n steps evenly spaced in log sigma, with no
    final 0: DPM fast and DPM adaptive's own schedule (A1111 hands them only the model's sigma_min
    and sigma_max; they choose their steps in log sigma themselves)."""
    _check_steps(steps)
    return np.exp(np.linspace(np.log(schedule.sigma_max), np.log(schedule.sigma_min), steps + 1))


def unipc_time_uniform(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """UniPC's own schedule in A1111 (skip type "time_uniform"): n+1 timesteps evenly spaced from T-1
    down to 0, their noise levels interpolating log alpha linearly in t (UniPC's discrete VP
    schedule, not log sigma as `t_to_sigma`), ending at sigma(t=0) like DDIM."""
    _check_steps(steps)
    t = np.linspace(schedule.num_timesteps - 1, 0, steps + 1)
    log_alphas_cumprod = np.interp(t, np.arange(schedule.num_timesteps), np.log(schedule.alphas_cumprod))
    return np.sqrt(np.expm1(-log_alphas_cumprod))


def lcm_timesteps(schedule: NoiseSchedule, steps: int, original_steps: int = LCM_ORIGINAL_STEPS) -> np.ndarray:
    """LCM's timesteps as diffusers' LCMScheduler picks them from the distillation schedule
    (k*T/50 - 1): 4 steps -> 999, 759, 499, 259."""
    _check_steps(steps)
    if steps > original_steps:
        raise ValueError(f"LCM takes at most {original_steps} steps, got {steps}")
    origin = lcm_original_timesteps(schedule, original_steps)[::-1]
    return origin[np.floor(np.linspace(0, original_steps, steps, endpoint=False)).astype(np.int64)]


def lcm(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """LCM's schedule: the sigmas of its timesteps, then 0."""
    return _with_zero(schedule.sigmas[lcm_timesteps(schedule, steps)])


def lcm_original_timesteps(schedule: NoiseSchedule, original_steps: int = LCM_ORIGINAL_STEPS) -> np.ndarray:
    """The ascending timesteps LCM was distilled on (19, 39, ..., 999)."""
    skip = schedule.num_timesteps // original_steps
    return np.arange(1, original_steps + 1) * skip - 1


def img2img_sigmas(sigmas: np.ndarray, strength: float) -> np.ndarray:
    """The tail of a full schedule that img2img runs, as A1111 picks it (docs/facts.md §4.6):
    t_enc = int(min(strength, 0.999) * steps) and start at index steps - t_enc - 1, so t_enc + 1
    steps run (20 steps at 0.75 -> 16 steps from sigmas[4]). Strength 0 runs no step: the
    result holds only the final sigma and a sampler returns its input."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be from 0 to 1, got {strength!r}")
    steps = len(sigmas) - 1
    if strength == 0.0:
        return np.asarray(sigmas[-1:], dtype=np.float64)
    t_enc = int(min(strength, 0.999) * steps)
    return np.asarray(sigmas[steps - t_enc - 1:], dtype=np.float64)


@dataclass(frozen=True)
class Schedule:
    name: str  # A1111's label
    function: ScheduleFn | None  # None for "Automatic": the sampler's own default
    per_family: bool = False  # the function takes `sdxl=` (Align Your Steps has SD1 and SDXL sigmas)

    def sigmas(self, noise_schedule: NoiseSchedule, steps: int, sdxl: bool = False) -> np.ndarray:
        if self.function is None:
            raise ValueError("'Automatic' is the sampler's default schedule: resolve it with the sampler")
        if self.per_family:
            return self.function(noise_schedule, steps, sdxl=sdxl)
        return self.function(noise_schedule, steps)


# A1111's schedule labels (sd_schedulers.py), each with A1111's internal name as an alias.
SCHEDULES: tuple[Schedule, ...] = (
    Schedule("Automatic", None),
    Schedule("Uniform", uniform),
    Schedule("Karras", karras),
    Schedule("Exponential", exponential),
    Schedule("Polyexponential", polyexponential),
    Schedule("SGM Uniform", sgm_uniform),
    Schedule("KL Optimal", kl_optimal),
    Schedule("Align Your Steps", align_your_steps, per_family=True),
    Schedule("Simple", simple),
    Schedule("Normal", normal),
    Schedule("DDIM", ddim_uniform),
    Schedule("Beta", beta),
)
_ALIASES = {
    "sgm_uniform": "SGM Uniform", "sgmuniform": "SGM Uniform", "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
}


def schedule_by_name(name: str) -> Schedule:
    """A schedule by its A1111 label, case-insensitively ("karras", "SGM Uniform", "sgm_uniform")."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key).lower()
    for schedule in SCHEDULES:
        if schedule.name.lower() == key:
            return schedule
    allowed = ", ".join(s.name for s in SCHEDULES)
    raise ValueError(f"schedule {name!r} is not known; expected one of: {allowed}")
