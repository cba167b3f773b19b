"""The video plugin's prompt convention: a prompt line starting with `-` belongs to the negative
prompt. Opt-in (`GenerationRequest.dash_lines_negative`), because A1111 reads such lines as text."""

from __future__ import annotations

import dataclasses

from .request import GenerationRequest


def move_dash_lines(prompt: str, negative_prompt: str) -> tuple[str, str]:
    """(prompt without its `-` lines, negative prompt with their text appended after a comma)."""
    kept: list[str] = []
    moved: list[str] = []
    for line in prompt.splitlines():
        text = line.lstrip()
        if text.startswith("-"):
            moved.append(text[1:].strip())
        else:
            kept.append(line)
    if len(kept) == len(prompt.splitlines()):
        return prompt, negative_prompt  # untouched, trailing newline and all
    negative = ", ".join(part for part in (negative_prompt.strip(), *moved) if part)
    return "\n".join(kept), negative


def with_dash_lines_moved(request: GenerationRequest) -> GenerationRequest:
    """The request as it runs and is recorded: its `-` lines moved when it asks for that."""
    if not request.dash_lines_negative:
        return request
    prompt, negative = move_dash_lines(request.prompt, request.negative_prompt)
    return dataclasses.replace(request, prompt=prompt, negative_prompt=negative, dash_lines_negative=False)
