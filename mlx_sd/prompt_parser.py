"""A1111's emphasis syntax: split a prompt into (text, weight) fragments and chunk breaks.

    (text)      weight x1.1          [text]     weight /1.1
    (text:1.3)  weight x1.3          nesting multiplies: ((a)) = 1.21
    \\( \\) \\[ \\] \\\\  literal characters     BREAK (uppercase word) ends the 75-token chunk

Unbalanced openers are closed at the end of the prompt, stray closers are literal text, adjacent
fragments of equal weight are merged, and an empty prompt is one empty fragment (docs/facts.md §5.1).
Prompt editing (`[a:b:0.5]`), alternation (`[a|b]`) and `AND` are not scheduled here: their text goes
through this parser verbatim, which is what A1111 does with text it cannot schedule.

Two deliberate differences from A1111 (both cases where A1111 misbehaves):
- A malformed weight such as `(a:1.2.3)` crashes A1111's float(); here the `:1.2.3` is literal text and
  the `)` closes the bracket with the usual x1.1. A weight that overflows to infinity is treated alike.
- A1111 marks BREAK with the weight -1 and then lets enclosing brackets multiply that marker, so a
  BREAK inside brackets becomes the word "break" with a negative weight. Here BREAK is always a break.
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
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)

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
    items: list[Fragment | Break] = []
    weights: list[float] = []  # per item; a Break keeps 1.0 and is never multiplied
    round_open: list[int] = []  # item index where each still-open bracket began
    square_open: list[int] = []

    def add_text(text: str) -> None:
        for i, part in enumerate(_BREAK.split(text)):
            if i > 0:
                items.append(BREAK)
                weights.append(1.0)
            items.append(Fragment(part))
            weights.append(1.0)

    def multiply_from(start: int, factor: float) -> None:
        for i in range(start, len(items)):
            if isinstance(items[i], Fragment):
                weights[i] *= factor

    for match in _TOKEN.finditer(prompt):
        kind = match.lastgroup  # the outer group: "weighted_close", never its inner "weight"
        token = match.group(0)
        if kind == "escape":
            items.append(Fragment(token[1]))
            weights.append(1.0)
        elif kind == "backslash":
            continue
        elif kind == "open":
            (round_open if token == "(" else square_open).append(len(items))
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

    merged: list[Fragment | Break] = []
    for item, weight in zip(items, weights):
        last = merged[-1] if merged else None
        if isinstance(item, Fragment) and isinstance(last, Fragment) and last.weight == weight:
            merged[-1] = Fragment(last.text + item.text, weight)
        else:
            merged.append(Fragment(item.text, weight) if isinstance(item, Fragment) else item)
    return merged or [Fragment("")]
