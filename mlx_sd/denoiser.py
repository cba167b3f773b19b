"""The model denoiser D(x, sigma) -> x0 that samplers call: the UNet wrapped for epsilon- or
v-prediction in the k-diffusion frame (docs/facts.md §4.1), with classifier-free guidance (§4.5).

UNet input = x * c_in with c_in = 1/sqrt(sigma^2 + 1) and timestep t(sigma) (docs/facts.md §4.2).
  epsilon: D = x - sigma * eps
  v:       D = c_skip * x + c_out * v,  c_skip = 1/(sigma^2 + 1), c_out = -sigma/sqrt(sigma^2 + 1)
With CFG the negative and positive rows go through the UNet in one call of batch 2B (negative
first, as diffusers orders them) and D = D_neg + scale * (D_pos - D_neg); at scale <= 1 the
negative branch is skipped (one call of batch B), as diffusers does. Sigma and guidance arithmetic
stay float32 whatever dtype the UNet computes in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx
import numpy as np

from .config import PREDICTION_TYPES
from .schedules import NoiseSchedule, lcm_original_timesteps

UNetFn = Callable[..., mx.array]  # unet(sample NHWC, t (B,), context (B, L, C), **extra) -> NHWC
TIMESTEP_MODES = ("fractional", "discrete", "lcm")
LCM_SIGMA_DATA = 0.5
LCM_TIMESTEP_SCALING = 10.0


def scalings(sigma: float, prediction_type: str) -> tuple[float, float, float]:
    """(c_skip, c_out, c_in) with D = c_skip * x + c_out * model(x * c_in)."""
    c_in = 1.0 / math.sqrt(sigma**2 + 1.0)
    if prediction_type == "epsilon":
        return 1.0, -sigma, c_in
    if prediction_type == "v_prediction":
        return 1.0 / (sigma**2 + 1.0), -sigma * c_in, c_in
    raise ValueError(f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")


def lcm_boundary_scalings(t: float) -> tuple[float, float]:
    """LCM's consistency-model boundary condition at timestep t: (c_skip, c_out) with
    tau = 10 t, c_skip = sd^2/(tau^2 + sd^2), c_out = tau/sqrt(tau^2 + sd^2), sd = 0.5."""
    tau = t * LCM_TIMESTEP_SCALING
    c_skip = LCM_SIGMA_DATA**2 / (tau**2 + LCM_SIGMA_DATA**2)
    return c_skip, tau / math.sqrt(tau**2 + LCM_SIGMA_DATA**2)


@dataclass(frozen=True)
class Conditioning:
    """What the UNet is conditioned on, per image of the batch.

    `extra` holds further UNet inputs for the positive rows (SDXL: text_embeds (B, 1280), time_ids
    (B, 6 or 5)); `negative_extra` the same keys for the negative rows. `c_concat` (B, h, w, 5) is an
    inpainting model's mask and masked-image latent, appended after the scaled latent channels."""

    context: mx.array  # (B, L, C) positive prompt
    negative_context: mx.array | None = None  # (B, L', C) negative prompt; needed when cfg_scale > 1
    cfg_scale: float = 7.0
    extra: dict[str, mx.array] = field(default_factory=dict)
    negative_extra: dict[str, mx.array] = field(default_factory=dict)
    c_concat: mx.array | None = None

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale > 1.0

    @property
    def batch_size(self) -> int:
        return self.context.shape[0]

    def validate(self) -> None:
        if self.context.ndim != 3:
            raise ValueError(f"context must be (batch, tokens, dim), got shape {tuple(self.context.shape)}")
        batch = self.batch_size
        if self.uses_cfg:
            if self.negative_context is None:
                raise ValueError(
                    f"cfg_scale {self.cfg_scale} > 1 needs a negative_context (encode the empty prompt), got None"
                )
            if self.negative_context.shape[0] != batch or self.negative_context.shape[2] != self.context.shape[2]:
                raise ValueError(
                    f"negative_context must be ({batch}, tokens, {self.context.shape[2]}) like context, "
                    f"got shape {tuple(self.negative_context.shape)}"
                )
            if set(self.negative_extra) != set(self.extra):
                raise ValueError(
                    f"negative_extra must have the same keys as extra ({sorted(self.extra)}), "
                    f"got {sorted(self.negative_extra)}"
                )
        for kind, extra in (("extra", self.extra), ("negative_extra", self.negative_extra)):
            for key, value in extra.items():
                if value.shape[0] != batch:
                    raise ValueError(f"{kind}[{key!r}] must have batch {batch}, got shape {tuple(value.shape)}")
        if self.c_concat is not None and (self.c_concat.ndim != 4 or self.c_concat.shape[0] != batch):
            raise ValueError(
                f"c_concat must be (batch {batch}, h, w, channels), got shape {tuple(self.c_concat.shape)}"
            )


class Denoiser:
    """D(x, sigma) for a UNet-like callable; see the module docstring for the formulas.

    `timesteps` picks the UNet timestep for a sigma: "fractional" interpolates between training
    timesteps (A1111's default), "discrete" takes the nearest one (DDIM; diffusers' DPM-Solver
    with Karras sigmas), "lcm" the nearest of LCM's distillation timesteps and then applies LCM's
    boundary scalings to the prediction. `dtype` is what the UNet computes in."""

    def __init__(
        self,
        unet: UNetFn,
        noise_schedule: NoiseSchedule,
        conditioning: Conditioning,
        prediction_type: str = "epsilon",
        timesteps: str = "fractional",
        dtype: mx.Dtype = mx.float32,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
        if timesteps not in TIMESTEP_MODES:
            raise ValueError(f"timesteps {timesteps!r} is not one of {', '.join(TIMESTEP_MODES)}")
        conditioning.validate()
        self.unet = unet
        self.noise_schedule = noise_schedule
        self.cond = conditioning
        self.prediction_type = prediction_type
        self.timesteps = timesteps
        self.dtype = dtype
        self._lcm_timesteps = lcm_original_timesteps(noise_schedule) if timesteps == "lcm" else None
        self._batched = self._batch_inputs()

    def _batch_inputs(self) -> tuple[mx.array, dict[str, mx.array], mx.array | None]:
        """Context, extra inputs and c_concat for one UNet call: [negative; positive] with CFG."""
        cond = self.cond
        if not cond.uses_cfg:
            return cond.context, dict(cond.extra), cond.c_concat
        negative, positive = cond.negative_context, cond.context
        if negative.shape[1] != positive.shape[1]:
            # A1111 pads the shorter prompt with empty-prompt chunks; that is the caller's job.
            raise ValueError(
                f"negative_context has {negative.shape[1]} tokens and context {positive.shape[1]}: "
                "expected equal lengths (pad the shorter one with empty-prompt chunks)"
            )
        context = mx.concatenate([negative, positive], axis=0)
        extra = {key: mx.concatenate([cond.negative_extra[key], value], axis=0) for key, value in cond.extra.items()}
        c_concat = None if cond.c_concat is None else mx.concatenate([cond.c_concat, cond.c_concat], axis=0)
        return context, extra, c_concat

    def timestep(self, sigma: float) -> float:
        """The UNet timestep for a noise level under this denoiser's timestep mode."""
        if self.timesteps == "lcm":
            sigmas = self.noise_schedule.sigmas[self._lcm_timesteps]
            nearest = np.abs(np.log(sigma) - np.log(sigmas)).argmin()
            return float(self._lcm_timesteps[nearest])
        return float(self.noise_schedule.sigma_to_t(sigma, quantize=self.timesteps == "discrete"))

    def __call__(self, x: mx.array, sigma: float) -> mx.array:
        batch = self.cond.batch_size
        if x.ndim != 4 or x.shape[0] != batch:
            raise ValueError(f"x must be (batch {batch}, h, w, channels) like the conditioning, got {tuple(x.shape)}")
        sigma = float(sigma)
        c_skip, c_out, c_in = scalings(sigma, self.prediction_type)
        t = self.timestep(sigma)
        context, extra, c_concat = self._batched
        rows = context.shape[0]

        x = x.astype(mx.float32)
        x_in = x * c_in
        if rows != batch:
            x_in = mx.concatenate([x_in, x_in], axis=0)
        if c_concat is not None:
            x_in = mx.concatenate([x_in, c_concat.astype(x_in.dtype)], axis=-1)
        t_in = mx.full((rows,), t, dtype=mx.float32)
        output = self.unet(x_in.astype(self.dtype), t_in, context, **extra).astype(mx.float32)

        if rows != batch:
            x_rows = mx.concatenate([x, x], axis=0)
        else:
            x_rows = x
        denoised = x_rows * c_skip + output * c_out
        if self.timesteps == "lcm":
            # the boundary condition mixes in the DDPM-frame sample x_t = x * c_in, as diffusers' LCMScheduler
            lcm_skip, lcm_out = lcm_boundary_scalings(t)
            denoised = denoised * lcm_out + x_rows * (c_in * lcm_skip)
        if rows == batch:
            return denoised
        negative, positive = denoised[:batch], denoised[batch:]
        return negative + (positive - negative) * self.cond.cfg_scale
