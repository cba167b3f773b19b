"""A1111's prompt editing and alternation: a prompt becomes the prompt texts of its sampling steps.

  [from:to:when]  `from` until step `when`, then `to`     [to:when]  nothing, then `to`
  [from::when]    `from`, then nothing                     [a|b|c]    a, b, c, a, ... step by step

`when` below 1 with a decimal point is a fraction of the steps, else a step number (int() of it,
at most the step count). On the hires pass (A1111's rules) whole numbers count from the start of the
first pass and fractions from the start of the hires pass: `when` becomes `when - base_steps`, or
`(when - 1) * hires_steps`. Constructs nest. Everything else, emphasis `(a:1.2)` and `[a]` included,
stays in the text as written for the prompt parser (mlx_sd.prompt_parser).

The grammar is A1111's (prompt_parser.py): a bracket whose content does not fit a construct is kept
as literal text, but a `|` outside an alternation (or a trailing lone backslash) makes the whole
prompt plain text with no schedule, as A1111's parser fails on it. Parsing is one pass with a stack
(linear time, no recursion, so any nesting depth is safe); each step's text is one walk of the tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")
_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*")


@dataclass
class _Frame:
    """An open bracket: its content split at its own `:` and `|`, and whether it can still be a
    construct (nothing in it was kept as literal text)."""

    opener: str
    segments: list[list[object]] = field(default_factory=lambda: [[]])
    separators: list[str] = field(default_factory=list)
    closer: str = ""  # "" while unclosed
    valid: bool = True


@dataclass
class _Scheduled:
    before: list[object] | None  # None in the [to:when] form
    after: list[object]
    when: str  # the number as written
    end: int = 0  # the step it switches after, set once the step count is known


@dataclass
class _Alternate:
    options: list[list[object]]


@dataclass
class _Literal:
    """A bracket kept as written (emphasis, or content that fits no construct)."""

    frame: _Frame


class _PlainPrompt(Exception):
    """A1111's parser would fail: the prompt has no schedule."""


def parse(prompt: str) -> list[object]:
    """The prompt as nodes: str, _Scheduled, _Alternate, _Literal; raises _PlainPrompt."""
    top: list[object] = []
    stack: list[_Frame] = []

    def current() -> list[object]:
        return stack[-1].segments[-1] if stack else top

    def add_literal(node: object) -> None:
        if stack:
            stack[-1].valid = False  # literal text is only allowed outside every construct
        current().append(node)

    i, n = 0, len(prompt)
    while i < n:
        char = prompt[i]
        if char == "\\":
            if i + 1 == n:
                raise _PlainPrompt("a trailing lone backslash")
            current().append(prompt[i:i + 2])
            i += 2
            continue
        if char in "[(":
            stack.append(_Frame(char))
        elif char in ":|":
            if stack:
                stack[-1].separators.append(char)
                stack[-1].segments.append([])
            elif char == ":":
                current().append(char)
            else:
                raise _PlainPrompt("a | outside [ ]")
        elif char in "])":
            if stack and stack[-1].opener == ("[" if char == "]" else "("):
                frame = stack.pop()
                frame.closer = char
                node = _classify(frame)
                if isinstance(node, _Literal) and not node.frame.valid:
                    add_literal(node)
                else:
                    current().append(node)
            else:
                add_literal(char)
        else:
            j = i + 1
            while j < n and prompt[j] not in "\\[]():|":
                j += 1
            current().append(prompt[i:j])
            i = j
            continue
        i += 1
    while stack:  # unclosed brackets are literal text
        frame = stack.pop()
        if "|" in frame.separators:
            raise _PlainPrompt("a | in an unclosed [")
        add_literal(_Literal(frame))
    return top


def _classify(frame: _Frame) -> object:
    separators = set(frame.separators)
    if "|" in separators:
        if frame.opener == "[" and frame.valid and separators == {"|"}:
            return _Alternate(frame.segments)
        raise _PlainPrompt("a | outside an alternation")
    if frame.opener == "[" and frame.valid and len(frame.separators) in (1, 2):
        last = frame.segments[-1]
        number = _NUMBER.fullmatch("".join(last)) if all(isinstance(part, str) for part in last) else None
        if number:
            before = frame.segments[0] if len(frame.separators) == 2 else None
            return _Scheduled(before, frame.segments[-2], number.group(1))
    if frame.valid and len(frame.separators) <= (1 if frame.opener == "(" else 0):
        return _Literal(frame)  # emphasis: kept as written, its content still scheduled
    frame.valid = False
    return _Literal(frame)


def _walk(nodes: list[object]):
    """Every node under `nodes`, parents first (explicit stack: nesting depth is unbounded)."""
    stack = [iter(nodes)]
    while stack:
        node = next(stack[-1], None)
        if node is None:
            stack.pop()
            continue
        yield node
        if isinstance(node, _Scheduled):
            stack.append(iter((node.before or []) + node.after))
        elif isinstance(node, _Alternate):
            stack.append(iter([part for option in node.options for part in option]))
        elif isinstance(node, _Literal):
            stack.append(iter([part for segment in node.frame.segments for part in segment]))


def _text_at(nodes: list[object], step: int) -> str:
    out: list[str] = []
    stack: list[object] = [iter(nodes)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif isinstance(item, str):
            out.append(item)
        elif isinstance(item, _Scheduled):
            stack.append(iter((item.before or []) if step <= item.end else item.after))
        elif isinstance(item, _Alternate):
            stack.append(iter(item.options[(step - 1) % len(item.options)]))
        else:  # _Literal: opener, segments joined by their separators, closer
            frame = item.frame
            parts: list[object] = [frame.opener]
            for k, segment in enumerate(frame.segments):
                parts.extend(([frame.separators[k - 1]] if k else []) + segment)
            stack.append(iter(parts + [frame.closer]))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """A1111's schedule of a prompt: (last step, text) pairs in step order; text i applies to the
    steps after entry i-1's last step up to its own. `hires_steps` gives the hires pass's schedule
    (with `steps` the first pass's count)."""
    if steps < 1 or (hires_steps is not None and hires_steps < 1):
        raise ValueError(f"steps must be at least 1, got {steps} and hires steps {hires_steps}")
    try:
        nodes = parse(prompt)
    except _PlainPrompt:
        return [(hires_steps or steps, prompt)]
    total, int_offset, fraction_offset = (steps, 0, 0.0) if hires_steps is None else (hires_steps, steps, 1.0)
    ends = {total}
    for node in _walk(nodes):
        if isinstance(node, _Scheduled):
            value = float(node.when)
            value = (value - fraction_offset) * total if "." in node.when else value - int_offset
            node.end = min(total, int(value))
            if node.end >= 1:
                ends.add(node.end)
        elif isinstance(node, _Alternate):
            ends.update(range(1, total + 1))
    return [(end, _text_at(nodes, end)) for end in sorted(ends)]


def at_step(schedule: list[tuple[int, T]], step: int) -> T:
    """The entry for step `step` (0-based) as A1111 picks it: the first whose last step is at least
    `step` (A1111 compares its 0-based count with the 1-based ends), else the first entry."""
    return next((value for end, value in schedule if step <= end), schedule[0][1])
