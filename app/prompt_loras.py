"""Editing the LoRA tags and embedding names of a prompt, as the LoRA panel does: add a tag, change a
tag's weight in place, remove it. Qt-free; the tags are found by mlx_sd.lora (one reading of the syntax)."""

from __future__ import annotations

import re

from mlx_sd.lora.prompt_tags import find_lora_tags
from mlx_sd.request import LoraRequest

SEPARATOR = ", "
WEIGHT_DECIMALS = 2
_SEPARATOR_AFTER = re.compile(r" *, *")


def format_weight(weight: float) -> str:
    """1.0 -> "1", 0.75 -> "0.75", -0.5 -> "-0.5" (as A1111's Extra Networks writes them)."""
    text = f"{round(weight, WEIGHT_DECIMALS):.{WEIGHT_DECIMALS}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def lora_tag(name: str, weight: float = 1.0) -> str:
    return f"<lora:{name}:{format_weight(weight)}>"


def prompt_loras(prompt: str) -> list[LoraRequest]:
    """The well-formed LoRA tags of `prompt`, the first of each name, in order."""
    seen: dict[str, LoraRequest] = {}
    for _, _, tag in find_lora_tags(prompt):
        if tag is not None:
            seen.setdefault(tag.name, tag)
    return list(seen.values())


def append_to_prompt(prompt: str, text: str) -> str:
    """`text` added at the end of `prompt` after a comma (a prompt ending in a comma or a new line keeps it)."""
    stripped = prompt.rstrip(" ")
    if not stripped.strip():
        return text
    if stripped.endswith((",", "\n")):
        return f"{stripped}{'' if stripped.endswith(chr(10)) else ' '}{text}"
    return f"{stripped}{SEPARATOR}{text}"


def add_lora(prompt: str, name: str, weight: float = 1.0) -> str:
    """`prompt` with the tag `<lora:name:weight>` added, unless a tag of that LoRA is there already."""
    if any(tag.name == name for tag in prompt_loras(prompt)):
        return prompt
    return append_to_prompt(prompt, lora_tag(name, weight))


def add_word(prompt: str, word: str) -> str:
    """`prompt` with `word` (an embedding's name) added, unless it is there as a whole word already."""
    if re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt):
        return prompt
    return append_to_prompt(prompt, word)


def set_lora_weight(prompt: str, name: str, weight: float) -> str:
    """Every tag of the LoRA `name` rewritten as `<lora:name:weight>` (text encoder and UNet alike)."""
    return _rewrite(prompt, name, lora_tag(name, weight))


def remove_lora(prompt: str, name: str) -> str:
    """The tags of `name` taken out, each with the comma that joined it to the text before (or after)."""
    return _rewrite(prompt, name, "", drop_separator=True).strip()


def _rewrite(prompt: str, name: str, replacement: str, drop_separator: bool = False) -> str:
    parts: list[str] = []
    last = 0
    for start, end, tag in find_lora_tags(prompt):
        if tag is None or tag.name != name:
            continue
        before = prompt[last:start]
        if drop_separator:
            trimmed = before.rstrip()
            if trimmed.endswith(","):
                before = trimmed[:-1]
            elif separator := _SEPARATOR_AFTER.match(prompt, end):  # first in the prompt or its line
                end = separator.end()
        parts += [before, replacement]
        last = end
    parts.append(prompt[last:])
    return "".join(parts)
