"""A1111's composable diffusion: `a castle :1.2 AND a forest :0.8`.

The prompt splits on the uppercase word AND; each part may end in `:weight` (default 1) and is
encoded on its own (emphasis and editing work inside each part). The negative prompt and every part
go through the UNet in one batched call, and the guided prediction is, as A1111 combines it,
    D = D_neg + sum_i (w_i * cfg_scale) * (D_i - D_neg)
(so one part of weight 1 is ordinary classifier-free guidance). A1111 runs the negative branch
whatever the scale, so a composable prompt always encodes the negative prompt.

The "embedding" blend instead conditions on the weighted sum of the parts' encodings (weights that
sum to 1 interpolate them) under ordinary guidance: one positive row per image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import numpy as np

from .denoiser import Conditioning, Denoiser
from .prompt_schedule import at_step, prompt_schedule
from .request import GenerationRequest

BLEND_INFOTEXT_KEY = "Prompt blend"  # ours: A1111 has no embedding blend

AND_WORD = re.compile(r"\bAND\b")
WEIGHT_NUMBER = re.compile(r"[-+]?(?:\d+\.?|\d*\.\d+)")  # the number A1111 accepts after the colon


@dataclass(frozen=True)
class PromptParts:
    """A prompt's AND-parts and their weights; `composable` is False for a prompt with no AND and
    no trailing weight, which is then encoded exactly as written."""

    texts: tuple[str, ...]
    weights: tuple[float, ...]
    composable: bool


def _part(text: str) -> tuple[str, float | None]:
    """A part's text and its trailing `:weight` (None without one); the weight follows the last colon.
    As in A1111 (whose weight pattern's `.` stops at a line break), a part whose text has a line break
    after its leading whitespace takes no weight: the `:weight` stays in its text."""
    head, colon, tail = text.rpartition(":")
    if colon and WEIGHT_NUMBER.fullmatch(tail.strip()) and _takes_weight(head):
        return head.rstrip(), float(tail)
    return text.rstrip(), None


def _takes_weight(text: str) -> bool:
    return "\n" not in text.strip()


def prompt_parts(prompt: str) -> PromptParts:
    """Split on AND and read each part's weight, in time linear in the prompt's length."""
    parts = [_part(text) for text in AND_WORD.split(prompt)]
    if len(parts) == 1 and parts[0][1] is None:
        return PromptParts((prompt,), (1.0,), False)
    return PromptParts(tuple(t for t, _ in parts), tuple(1.0 if w is None else w for t, w in parts), True)


def composed_prompt(parts: list[tuple[str, float]], exact: bool = False) -> str:
    """`text :weight AND ...` for (text, weight) pairs, weights to 6 significant digits (for people)
    or `exact`ly (positional digits that read back as the same float: the weight pattern has no exponent)."""

    def weighted(text: str, weight: float) -> str:
        if not exact:
            return f"{text} :{weight:.6g}"
        # a part with a line break in its text takes no weight (its weight is 1): written as it is
        return f"{text} :{np.format_float_positional(weight, trim='-')}" if _takes_weight(text) else text

    # a part that starts with whitespace (as every part after the first does once split) needs no space added
    return "".join(
        ("" if i == 0 else " AND" if text[:1].isspace() else " AND ") + weighted(text, weight)
        for i, (text, weight) in enumerate(parts)
    )


def part_schedule(prompt: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """The prompt's schedule (mlx_sd.prompt_schedule) in A1111's order: split on AND first, then each
    part's editing and alternation on its own, so `[a AND b:c:5]` is the two parts `[a` and ` b:c:5]`
    (both plain text), not an edit from `a AND b` to `c`. Each entry's text is the parts at that step
    joined again with their exact weights, which `prompt_parts` splits back; a prompt that is not
    composable is scheduled as written."""
    parts = prompt_parts(prompt)
    if not parts.composable:
        return prompt_schedule(prompt, steps, hires_steps)
    schedules = [prompt_schedule(text, steps, hires_steps) for text in parts.texts]
    ends = sorted({end for schedule in schedules for end, _ in schedule})
    return [
        (end, composed_prompt([(at_step(s, end), w) for s, w in zip(schedules, parts.weights)], exact=True))
        for end in ends
    ]


@dataclass(frozen=True)
class ComposableConditioning:
    """`rows` conditions one UNet call of (1 + parts) x batch rows: the negative prompt's batch
    first, then each part's batch, with no guidance of its own (cfg_scale 1)."""

    rows: Conditioning
    weights: tuple[float, ...]
    cfg_scale: float

    @classmethod
    def from_guided(cls, guided: Conditioning, weights: tuple[float, ...], batch: int) -> "ComposableConditioning":
        """From a conditioning whose context holds the parts' batches one after another and whose
        negative rows repeat the negative prompt once per part."""
        extra = {
            key: mx.concatenate([guided.negative_extra[key][:batch], value], axis=0)
            for key, value in guided.extra.items()
        }
        c_concat = guided.c_concat
        if c_concat is not None:
            c_concat = mx.concatenate([c_concat] * (len(weights) + 1), axis=0)
        rows = Conditioning(
            context=mx.concatenate([guided.negative_context[:batch], guided.context], axis=0),
            cfg_scale=1.0,
            extra=extra,
            c_concat=c_concat,
        )
        return cls(rows, weights, guided.cfg_scale)


class ComposableDenoiser:
    """D(x, sigma) for a composable prompt; `rows` is a Denoiser over ComposableConditioning.rows."""

    def __init__(self, rows: Denoiser, weights: tuple[float, ...], cfg_scale: float):
        self.rows = rows
        self.weights = weights
        self.cfg_scale = cfg_scale

    def _predictions(self, x: mx.array, sigma: float) -> tuple[mx.array, list[mx.array]]:
        batch = x.shape[0]
        _, denoised = self.rows.predictions(mx.concatenate([x] * (len(self.weights) + 1), axis=0), sigma)
        parts = [denoised[(i + 1) * batch : (i + 2) * batch] for i in range(len(self.weights))]
        return denoised[:batch], parts

    def __call__(self, x: mx.array, sigma: float) -> mx.array:
        negative, parts = self._predictions(x, sigma)
        guided = negative
        for weight, part in zip(self.weights, parts):
            guided = guided + (part - negative) * (weight * self.cfg_scale)
        return guided

    def predictions(self, x: mx.array, sigma: float) -> tuple[mx.array, mx.array]:
        """(negative, the weighted parts as one positive) so that negative + scale * (positive -
        negative) is the composable result (DDIM CFG++ mixes these its own way)."""
        negative, parts = self._predictions(x, sigma)
        positive = negative
        for weight, part in zip(self.weights, parts):
            positive = positive + (part - negative) * weight
        return negative, positive


def denoiser_for(
    conditioning: Conditioning | ComposableConditioning, make: Callable[[Conditioning], Denoiser]
) -> Denoiser | ComposableDenoiser:
    """The denoiser for either kind of conditioning; `make` builds the model's Denoiser."""
    if isinstance(conditioning, ComposableConditioning):
        return ComposableDenoiser(make(conditioning.rows), conditioning.weights, conditioning.cfg_scale)
    return make(conditioning)


def blend_parameters(request: GenerationRequest) -> dict[str, str]:
    """The infotext parameter that says a composable prompt was an embedding blend."""
    if request.and_blend == "embedding" and prompt_parts(request.prompt).composable:
        return {BLEND_INFOTEXT_KEY: request.and_blend}
    return {}


def embedding_blend(guided: Conditioning, weights: tuple[float, ...], batch: int) -> Conditioning:
    """Ordinary conditioning on the weighted sum of the parts' encodings (and of SDXL's pooled
    vectors and size ids, which are the same for every part), from a conditioning laid out as
    `ComposableConditioning.from_guided` expects."""

    def blended(rows: mx.array) -> mx.array:
        return sum((rows[i * batch : (i + 1) * batch] * w for i, w in enumerate(weights[1:], 1)), rows[:batch] * weights[0])

    negative = guided.negative_context
    return Conditioning(
        context=blended(guided.context),
        negative_context=None if negative is None else negative[:batch],
        cfg_scale=guided.cfg_scale,
        extra={key: blended(value) for key, value in guided.extra.items()},
        negative_extra={key: value[:batch] for key, value in guided.negative_extra.items()},
        c_concat=guided.c_concat,
    )
