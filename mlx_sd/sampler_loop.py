"""The contract every sampler keeps, and the loop they share.

Every sampler has one signature: it takes a denoiser `D(x, sigma) -> x0` (mlx_sd.denoiser wraps the
UNet and CFG into one), the starting latent `x` in the k-diffusion frame (x = x0 + sigma * noise,
so txt2img starts at unit noise times sigmas[0]) and a sigma schedule (mlx_sd.schedules), and runs
the schedule's len(sigmas) - 1 steps. Samplers from k-diffusion return x in the k-diffusion frame at
the last sigma, as A1111 decodes it; those that follow LDM's DDPM-frame updates (DDIM, DDIM CFG++,
PLMS, UniPC) return x / sqrt(1 + sigma_end^2). The two agree whenever the schedule ends at 0.

Stochastic samplers draw their noise through one interface, k-diffusion's noise sampler
`noise_sampler(sigma, sigma_next)` -> standard normal shaped like x. By default it is `IndependentNoise`
over `noise()` (mlx_sd.noise gives each image its own seeded stream: fresh draws whatever the step);
A1111's SDE samplers get Brownian-tree noise instead (mlx_sd.brownian). After each step
`callback(Step)` reports progress; before each step `cancel()` is asked and True raises `Cancelled`,
so no partial result escapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import mlx.core as mx
import numpy as np

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


class SamplerRun:
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


def need_noise(noise: NoiseSource | None, sampler: str, noise_sampler: NoiseSampler | None = None) -> NoiseSampler:
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
