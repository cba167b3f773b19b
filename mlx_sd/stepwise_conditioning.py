"""Conditioning that changes during sampling: A1111's prompt editing and alternation, applied to the
prompt and the negative prompt alike, each distinct pair of texts encoded once.

A1111 picks the conditioning by counting model calls, not sampler steps (its CFG denoiser counts
itself), so a second-order sampler moves through a schedule twice as fast, and calls past the last
step fall back to the first entry; `StepwiseDenoiser` does the same.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx

from .composable import part_schedule
from .denoiser import Conditioning, Denoiser
from .prompt_schedule import at_step, prompt_schedule
from .request import GenerationRequest

Encode = Callable[[str, str], Conditioning]  # (prompt, negative prompt) -> conditioning


def conditioning_schedule(
    request: GenerationRequest, encode: Encode, first_pass_steps: int | None = None
) -> list[tuple[int, Conditioning]]:
    """(last step, conditioning) pairs for the request's prompts over its steps; one entry for a
    prompt without editing or alternation, and one `encode` call per distinct pair of texts.
    `first_pass_steps` makes it a hires pass's schedule (A1111's rules, mlx_sd.prompt_schedule)."""
    steps = (request.steps,) if first_pass_steps is None else (first_pass_steps, request.steps)
    positive = part_schedule(request.prompt, *steps)  # AND first, as A1111 splits it
    negative = prompt_schedule(request.negative_prompt, *steps)
    ends = sorted({end for end, _ in positive} | {end for end, _ in negative})
    encoded: dict[tuple[str, str], Conditioning] = {}
    schedule = []
    for end in ends:
        texts = (at_step(positive, end), at_step(negative, end))
        if texts not in encoded:
            encoded[texts] = encode(*texts)
        schedule.append((end, encoded[texts]))
    return schedule


class StepwiseDenoiser:
    """The denoiser of the schedule entry for the current model call (0-based, A1111's rule)."""

    def __init__(self, denoisers: list[tuple[int, Denoiser]]):
        self.schedule = denoisers
        self.calls = 0

    def _next(self) -> Denoiser:
        denoiser = at_step(self.schedule, self.calls)
        self.calls += 1
        return denoiser

    @property
    def cfg_scale(self) -> float:
        return self.schedule[0][1].cfg_scale

    def __call__(self, x: mx.array, sigma: float) -> mx.array:
        return self._next()(x, sigma)

    def predictions(self, x: mx.array, sigma: float) -> tuple[mx.array | None, mx.array]:
        return self._next().predictions(x, sigma)


def stepwise(denoisers: list[tuple[int, Denoiser]]) -> Denoiser | StepwiseDenoiser:
    """A fresh call count for one sampling run; the denoiser itself when there is nothing to switch."""
    return denoisers[0][1] if len(denoisers) == 1 else StepwiseDenoiser(denoisers)
