"""A1111's emphasis syntax: split a prompt into (text, weight) fragments and chunk breaks.

    (text)      weight x1.1          [text]     weight /1.1
    (text:1.3)  weight x1.3          nesting multiplies: ((a)) = 1.21
    \\( \\) \\[ \\] \\\\  literal characters     BREAK (uppercase word) ends the 75-token chunk

Unbalanced openers are closed at the end of the prompt, stray closers are literal text, adjacent
fragments of equal weight are merged, and an empty prompt is one empty fragment (docs/facts.md §5.1).
Prompt editing (`[a:b:0.5]`), alternation (`[a|b]`) and `AND` are not scheduled here: their text goes
through this parser verbatim, which is what A1111 does with text it cannot schedule.

Three deliberate differences from A1111 (cases where A1111 misbehaves):
- A malformed weight such as `(a:1.2.3)` crashes A1111's float(); here the `:1.2.3` is literal text and
  the `)` closes the bracket with the usual x1.1. A weight that overflows to infinity is treated alike.
- A1111 marks BREAK with the weight -1 and then lets enclosing brackets multiply that marker, so a
  BREAK inside brackets becomes the word "break" with a negative weight. Here BREAK is always a break.
- Each closing bracket multiplies the weights of everything since its opener, so A1111's time grows
  with the square of the prompt for deep nesting. Here brackets of one kind nested deeper than
  MAX_NESTING (32 levels; 1.1**32 is about 21) are still matched but add no weight, which keeps the
  parse linear in the prompt's length and the weights bit-identical to A1111's below that depth.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# One alternative per syntax element, tried in this order (a lone backslash is removed, as in A1111).
_TOKEN = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\]) |
    (?P<backslash>\\) |
    (?P<open>[(\[]) |
    (?P<weighted_close>:\s*(?P<weight>[+-]?[.\d]+)\s*\)) |
    (?P<close>[)\]]) |
    (?P<text>[^\\()\[\]:]+) |
    (?P<colon>:)
    """,
    re.VERBOSE,
)
# A1111 splits on `\s*\bBREAK\b\s*`, which retries `\s*` at every character of a long run of spaces
# (quadratic); splitting on the word and stripping the spaces beside it gives the same parts.
_BREAK = re.compile(r"\bBREAK\b")
MAX_NESTING = 32

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1


@dataclass(frozen=True)
class Fragment:
    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class Break:
    """A chunk break: the current 75-token chunk is padded and a new one starts."""


BREAK = Break()


def _parse_weight(number: str) -> float | None:
    try:
        value = float(number)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_prompt_attention(prompt: str) -> list[Fragment | Break]:
    """Split `prompt` into weighted fragments and BREAK markers, A1111 style.

    >>> parse_prompt_attention("a (red:1.2) [cat]")
    [Fragment(text='a ', weight=1.0), Fragment(text='red', weight=1.2), Fragment(text=' ', weight=1.0), \
Fragment(text='cat', weight=0.9090909090909091)]
    """
    texts: list[str | None] = []  # per item: its text, None for a BREAK
    weights: list[float] = []  # per item; a BREAK's is multiplied too but never used
    # item index where each still-open bracket began; None for one nested deeper than MAX_NESTING
    round_open: list[int | None] = []
    square_open: list[int | None] = []

    def add_text(text: str) -> None:
        parts = _BREAK.split(text) if "BREAK" in text else [text]
        for i, part in enumerate(parts):
            if i > 0:
                texts.append(None)
                weights.append(1.0)
                part = part.lstrip()
            texts.append(part.rstrip() if i < len(parts) - 1 else part)
            weights.append(1.0)

    def open_bracket(stack: list[int | None]) -> None:
        stack.append(len(texts) if len(stack) < MAX_NESTING else None)

    def multiply_from(start: int | None, factor: float) -> None:
        if start is not None:
            weights[start:] = [weight * factor for weight in weights[start:]]

    for match in _TOKEN.finditer(prompt):
        kind = match.lastgroup  # the outer group: "weighted_close", never its inner "weight"
        token = match.group(0)
        if kind == "escape":
            texts.append(token[1])
            weights.append(1.0)
        elif kind == "backslash":
            continue
        elif kind == "open":
            open_bracket(round_open if token == "(" else square_open)
        elif kind == "weighted_close" and round_open:
            weight = _parse_weight(match.group("weight"))
            if weight is None:
                add_text(token[:-1])
                multiply_from(round_open.pop(), ROUND_MULTIPLIER)
            else:
                multiply_from(round_open.pop(), weight)
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            add_text(token)

    # Unclosed brackets apply to the end of the prompt (round ones first, as A1111 does).
    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)

    # Runs of fragments of equal weight become one; texts are joined once per run, not per fragment.
    merged: list[Fragment | Break] = []
    run: list[str] = []
    run_weight = 0.0
    for text, weight in zip(texts, weights):
        if text is not None and run and weight == run_weight:
            run.append(text)
            continue
        if run:
            merged.append(Fragment("".join(run), run_weight))
            run = []
        if text is None:
            merged.append(BREAK)
        else:
            run, run_weight = [text], weight
    if run:
        merged.append(Fragment("".join(run), run_weight))
    return merged or [Fragment("")]
