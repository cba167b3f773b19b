"""The training noise schedule in the k-diffusion frame, sigma <-> timestep, and sigma schedules.

A sigma schedule is a float64 numpy array of n+1 descending noise levels: a sampler's n steps go
sigmas[i] -> sigmas[i+1]. Every schedule ends at 0 except DDIM's, which ends at sigma(t=0) as
LDM's and diffusers' DDIM do (docs/facts.md §4.3, §4.4). Computations are float64 for exactness; samplers
apply the resulting scalars to float32 latents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np

from .config import NoiseScheduleConfig

ScheduleFn = Callable[["NoiseSchedule", int], np.ndarray]

KARRAS_RHO = 7.0
LCM_ORIGINAL_STEPS = 50  # LCM's distillation schedule: timesteps 19, 39, ..., 999


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
    _check_steps(steps)
    ramp = np.linspace(0.0, 1.0, steps)
    max_inv, min_inv = schedule.sigma_max ** (1 / rho), schedule.sigma_min ** (1 / rho)
    return _with_zero((max_inv + ramp * (min_inv - max_inv)) ** rho)


def exponential(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """Evenly spaced in log sigma between the model's sigma_max and sigma_min."""
    _check_steps(steps)
    return _with_zero(np.exp(np.linspace(np.log(schedule.sigma_max), np.log(schedule.sigma_min), steps)))


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


# A1111's schedule labels (sd_schedulers.py), each with A1111's internal name as an alias.
SCHEDULES: tuple[Schedule, ...] = (
    Schedule("Automatic", None),
    Schedule("Uniform", uniform),
    Schedule("Karras", karras),
    Schedule("Exponential", exponential),
    Schedule("SGM Uniform", sgm_uniform),
    Schedule("Simple", simple),
    Schedule("Normal", normal),
)
_ALIASES = {"sgm_uniform": "SGM Uniform", "sgmuniform": "SGM Uniform"}


def schedule_by_name(name: str) -> Schedule:
    """A schedule by its A1111 label, case-insensitively ("karras", "SGM Uniform", "sgm_uniform")."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key).lower()
    for schedule in SCHEDULES:
        if schedule.name.lower() == key:
            return schedule
    allowed = ", ".join(s.name for s in SCHEDULES)
    raise ValueError(f"schedule {name!r} is not known; expected one of: {allowed}")
