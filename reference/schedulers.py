"""The diffusers scheduler equivalent of each of our sampler + schedule pairs (torch side, for parity
tests against diffusers pipelines and schedulers).

`diffusers_scheduler(sampler, schedule, steps)` gives a `SchedulerMatch`: the diffusers class and
config that come closest natively, whether that native setup computes exactly what we compute, and
what differs. `SchedulerMatch.make()` builds a scheduler whose `set_timesteps(steps)` yields our
sigmas and UNet timesteps: the native one where it already does, otherwise one with our values
pinned in. Running a pipeline with it, our sampler reproduces diffusers when
  - the initial latent is unit noise times `initial_noise_scale` (k-diffusion frame: DPM-Solver,
    DDIM and LCM start from noise in the DDPM frame, sqrt(1 + sigma_max^2), Euler-family from
    sigma_max as A1111 does),
  - our Denoiser uses `timesteps=match.timesteps`,
  - stochastic steps get the same noise (`scheduler_noise`),
and `notes` lists what remains different from A1111 or from the native diffusers setup.

| sampler | schedule | diffusers | native = ours? |
|---|---|---|---|
| Euler | Karras / Exponential | EulerDiscreteScheduler use_karras/exponential_sigmas | yes (fractional t) |
| Euler | Uniform, Normal | EulerDiscreteScheduler linspace | if 999/(n-1) is whole (sigma vs log-sigma interp.) |
| Euler | SGM Uniform | EulerDiscreteScheduler trailing | only for 1 step: trailing rounds t (< 1 step apart) |
| Euler | Simple | EulerDiscreteScheduler trailing | when floor(i*T/n) = round(i*T/n) for all i (n divides 1000) |
| Heun | as Euler | HeunDiscreteScheduler | as Euler |
| Euler a | any | EulerAncestralDiscreteScheduler (no Karras/exponential options) | as Euler; Karras, Exponential no |
| DPM++ 2M | Karras | DPMSolverMultistep dpmsolver++ order 2, final sigma 0 | sigmas; t rounded (our "discrete") |
| DPM++ 2M | Exponential | same, use_exponential_sigmas | sigmas yes; t truncated to integers (999 -> 998) |
| DPM++ 2M (SDE, SDE Heun) | others | same (sde-dpmsolver++ midpoint/heun) | no: pinned |
| DPM++ SDE | any | DPMSolverSDEScheduler | no: Brownian-tree noise (torchsde), never the same draws |
| DDIM | Automatic | DDIMScheduler leading, offset 1, set_alpha_to_one False | yes (integer t) |
| DDIM | others | EulerDiscreteScheduler pinned, integer t (DDIM with eta 0 is Euler) | no native |
| LCM | Automatic | LCMScheduler, 50 original steps | yes |
| LCM | others | none | - |
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
)
from diffusers.schedulers import (
    scheduling_ddim,
    scheduling_dpmsolver_multistep,
    scheduling_euler_ancestral_discrete,
    scheduling_lcm,
)

from mlx_sd.config import NoiseScheduleConfig
from mlx_sd.samplers import sampler_by_name, sigmas_for
from mlx_sd.schedules import NoiseSchedule, schedule_by_name, trailing_timesteps

_A1111_NOISE = "A1111 starts from unit noise * sigma_max; diffusers' DDPM-frame start is sqrt(1 + sigma_max^2) * noise"


@dataclass
class SchedulerMatch:
    sampler: str
    schedule: str  # the resolved schedule ("Automatic" replaced by the sampler's default)
    steps: int
    scheduler_class: type | None  # None: diffusers has no equivalent
    config: dict[str, Any]
    exact: bool  # the native class + config compute our sigmas and UNet timesteps
    timesteps: str  # our Denoiser timestep mode that matches the UNet t diffusers feeds
    initial_noise_scale: float  # k-frame multiple of unit noise equal to diffusers' initial latent
    notes: list[str] = field(default_factory=list)
    sigmas: np.ndarray = field(default_factory=lambda: np.zeros(0))  # ours
    unet_timesteps: np.ndarray = field(default_factory=lambda: np.zeros(0))  # ours, per step

    def make(self) -> Any:
        """A scheduler whose set_timesteps(steps) gives our sigmas and timesteps (DPM++ SDE: the
        native one, which interleaves its own midpoints and noise and cannot be made to match)."""
        if self.scheduler_class is None:
            reason = "; ".join(self.notes)
            raise ValueError(f"diffusers has no scheduler for {self.sampler} + {self.schedule}: {reason}")
        if self.exact or self.scheduler_class is DPMSolverSDEScheduler:
            return self.scheduler_class(**self.config)
        return _pinned(self.scheduler_class, self.sigmas, self.unet_timesteps)(**self.config)


def _pinned(cls: type, sigmas: np.ndarray, timesteps: np.ndarray) -> type:
    """A subclass of a diffusers scheduler whose set_timesteps installs our sigmas and timesteps."""
    sig32 = torch.tensor(np.asarray(sigmas, dtype=np.float32))
    t32 = torch.tensor(np.asarray(timesteps, dtype=np.float32))
    steps = len(sigmas) - 1

    class Pinned(cls):  # type: ignore[valid-type, misc]
        def set_timesteps(
            self, num_inference_steps: int | None = None, device: Any = None, *args: Any, **kwargs: Any
        ) -> None:
            super().set_timesteps(num_inference_steps, device, *args, **kwargs)
            if num_inference_steps != steps:
                return  # e.g. the constructor's own call: leave diffusers' values
            if issubclass(cls, HeunDiscreteScheduler):
                # Heun visits every inner sigma twice (predictor, corrector)
                self.sigmas = torch.cat([sig32[:1], sig32[1:-1].repeat_interleave(2), sig32[-1:]])
                self.timesteps = torch.cat([t32[:1], t32[1:].repeat_interleave(2)]).to(device)
            else:
                self.sigmas = sig32.clone()
                self.timesteps = t32.clone().to(device)

    Pinned.__name__ = Pinned.__qualname__ = f"Pinned{cls.__name__}"
    return Pinned


def _base_config(noise: NoiseScheduleConfig, prediction_type: str) -> dict[str, Any]:
    return {
        "num_train_timesteps": noise.num_train_timesteps,
        "beta_start": noise.beta_start,
        "beta_end": noise.beta_end,
        "beta_schedule": noise.beta_schedule,
        "prediction_type": prediction_type,
    }


def _native_euler_like(
    schedule: str, steps: int, ns: NoiseSchedule, ours: np.ndarray, integer_t: bool
) -> tuple[dict[str, Any], bool, list[str]]:
    """Closest native config of diffusers' Euler-family schedulers for a schedule, and whether it
    gives our sigmas and timesteps (diffusers interpolates sigma linearly between training timesteps;
    `integer_t`: our denoiser feeds the nearest integer timestep)."""
    if schedule in ("Karras", "Exponential"):
        config = {"use_karras_sigmas" if schedule == "Karras" else "use_exponential_sigmas": True}
        if integer_t:
            return config, False, ["diffusers feeds fractional timesteps here, we integer ones (pinned to ours)"]
        return config, True, []
    T = ns.num_timesteps
    if schedule in ("Uniform", "Normal"):
        spacing, t = "linspace", np.linspace(0, T - 1, steps)[::-1]
        note = (
            "diffusers' linspace spacing has the same timesteps but interpolates sigma linearly in t, "
            "A1111 log sigma: equal only where the timesteps are integers (pinned to ours)"
        )
    else:  # SGM Uniform, Simple: diffusers' trailing spacing, integer timesteps
        spacing, t = "trailing", trailing_timesteps(T, steps).astype(np.float64)
        note = f"diffusers' trailing spacing rounds timesteps to integers, {schedule} does not (pinned to ours)"
    native = np.interp(t, np.arange(T), ns.sigmas)
    exact = bool(np.allclose(native, ours[:-1], rtol=1e-9, atol=0))
    return {"timestep_spacing": spacing}, exact, [] if exact else [note]


def diffusers_scheduler(
    sampler: str,
    schedule: str = "Automatic",
    steps: int = 20,
    noise: NoiseScheduleConfig | None = None,
    prediction_type: str = "epsilon",
) -> SchedulerMatch:
    """The diffusers scheduler for one of our sampler + schedule pairs; see the module docstring."""
    noise = noise or NoiseScheduleConfig()
    ns = NoiseSchedule.from_config(noise)
    info = sampler_by_name(sampler)
    schedule_info = schedule_by_name(schedule)
    sigmas = sigmas_for(info.name, schedule_info.name, steps, ns)
    # "ddim" and "lcm" have no label in A1111's list: "DDIM", "LCM"
    resolved = schedule_info.name if schedule_info.function else (
        info.default_schedule_name or info.default_schedule.__name__.upper()
    )
    config = _base_config(noise, prediction_type)
    quantize = info.timesteps != "fractional"
    unet_t = ns.sigma_to_t(sigmas[:-1], quantize=quantize)
    match = SchedulerMatch(
        info.name, resolved, steps, None, config, False, info.timesteps, float(sigmas[0]),
        sigmas=sigmas, unet_timesteps=unet_t,
    )
    ddpm_start = math.sqrt(1.0 + float(sigmas[0]) ** 2)

    if info.name in ("Euler", "Heun", "Euler a"):
        native, exact, notes = _native_euler_like(resolved, steps, ns, sigmas, integer_t=False)
        if info.name == "Euler a" and resolved in ("Karras", "Exponential"):
            native, exact = {"timestep_spacing": "linspace"}, False
            notes = [f"EulerAncestralDiscreteScheduler has no {resolved} option (pinned to ours)"]
        match.scheduler_class = {
            "Euler": EulerDiscreteScheduler, "Heun": HeunDiscreteScheduler, "Euler a": EulerAncestralDiscreteScheduler,
        }[info.name]
        match.config.update(native)
        match.exact, match.notes = exact, notes
        if info.name == "Euler a":
            match.notes.append("feed our ancestral noise with scheduler_noise(); diffusers draws on the last step too")
    elif info.name in ("DPM++ 2M", "DPM++ 2M SDE", "DPM++ 2M SDE Heun"):
        match.scheduler_class = DPMSolverMultistepScheduler
        match.config.update(
            algorithm_type="dpmsolver++" if info.name == "DPM++ 2M" else "sde-dpmsolver++",
            solver_type="heun" if info.name.endswith("Heun") else "midpoint",
            solver_order=2, final_sigmas_type="zero", lower_order_final=True, euler_at_final=False,
        )
        match.initial_noise_scale = ddpm_start
        match.notes.append(_A1111_NOISE)
        if resolved == "Karras":
            match.config["use_karras_sigmas"] = True
            match.exact, match.timesteps = True, "discrete"
            match.unet_timesteps = ns.sigma_to_t(sigmas[:-1], quantize=True)
            match.notes.append("diffusers rounds Karras timesteps to integers; A1111 feeds fractional t")
        elif resolved == "Exponential":
            match.config["use_exponential_sigmas"] = True
            match.notes.append(
                "diffusers truncates exponential-schedule timesteps to integers (999 becomes 998; pinned to ours)"
            )
        else:
            match.notes.append(f"no native {resolved} schedule in DPMSolverMultistepScheduler (pinned to ours)")
        if info.stochastic:
            match.notes.append("A1111 draws this SDE's noise from a Brownian tree; we and diffusers draw i.i.d.")
    elif info.name == "DPM++ SDE":
        match.scheduler_class = DPMSolverSDEScheduler
        match.config.update(use_karras_sigmas=resolved == "Karras")
        match.notes.append(
            "DPMSolverSDEScheduler draws Brownian-tree noise (torchsde) with its own seed: never the same draws as ours"
        )
    elif info.name == "DDIM":
        if schedule_info.function is None:
            match.initial_noise_scale = ddpm_start
            match.notes.append(_A1111_NOISE)
            match.scheduler_class = DDIMScheduler
            match.config.update(
                timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False
            )
            match.exact = True
            match.notes.append(
                "A1111 (>= 1.6) runs DDIM one step short: steps-1 model calls ending at t=1, not at alphas_cumprod[0]"
            )
        else:
            native, match.exact, match.notes = _native_euler_like(resolved, steps, ns, sigmas, integer_t=True)
            match.scheduler_class = EulerDiscreteScheduler
            match.config.update(native)
            match.notes.append(
                f"DDIMScheduler takes no {resolved} schedule; DDIM with eta 0 is Euler (integer t), with eta 1 Euler a"
            )
    elif info.name == "LCM":
        match.initial_noise_scale = ddpm_start
        if schedule_info.function is None:
            match.scheduler_class = LCMScheduler
            match.config.update(original_inference_steps=50, timestep_scaling=10.0, set_alpha_to_one=True)
            match.exact = True
            match.notes.append(
                "A1111's LCM spaces its timesteps evenly over the 50 distilled ones (4 steps: ~999, 679, 339, 19) "
                "and mixes the k-frame x into the boundary condition; we follow diffusers' LCMScheduler"
            )
        else:
            match.notes.append(f"LCMScheduler takes only LCM's own timesteps, not {resolved}")
    return match


@contextlib.contextmanager
def scheduler_noise(draw: Callable[[tuple[int, ...]], torch.Tensor]) -> Iterator[None]:
    """Make diffusers' schedulers take their step noise from `draw(shape)` (NCHW torch tensors):
    patches `randn_tensor` in the Euler-ancestral, DPM-Solver, DDIM and LCM scheduler modules."""
    modules = (scheduling_euler_ancestral_discrete, scheduling_dpmsolver_multistep, scheduling_ddim, scheduling_lcm)
    saved = [module.randn_tensor for module in modules]

    def fake(shape: Any, generator: Any = None, device: Any = None, dtype: Any = None, **_: Any) -> torch.Tensor:
        return draw(tuple(shape)).to(dtype=dtype or torch.float32)

    try:
        for module in modules:
            module.randn_tensor = fake
        yield
    finally:
        for module, original in zip(modules, saved):
            module.randn_tensor = original
