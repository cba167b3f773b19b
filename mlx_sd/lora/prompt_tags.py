"""A1111's LoRA prompt tags: `<lora:NAME>`, `<lora:NAME:W>` and `<lora:NAME:TE_W:UNET_W>`.

The tags are taken out of the text before it is encoded (the text around them is kept as written);
weights may be negative; W alone weighs the text encoders and the UNet alike; no weight is 1.
One regular-expression pass with no nested repetition: linear in the prompt's length.
"""

from __future__ import annotations

import math
import re

from ..request import LoraRequest
from .errors import LoraError

_TAG_RE = re.compile(r"<lora:([^<>]*)>")


def _weight(tag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise LoraError(f"{tag}: the weight {text.strip()!r} is not a number")
    return value


def _tag(match: re.Match[str]) -> LoraRequest:
    tag = match.group(0)
    name, *weights = match.group(1).split(":")
    if not name.strip():
        raise LoraError(f"{tag}: a LoRA tag needs a name, as in <lora:NAME:0.8>")
    if len(weights) > 2:
        raise LoraError(f"{tag}: a LoRA tag has at most two weights, <lora:NAME:TE_WEIGHT:UNET_WEIGHT>")
    values = [_weight(tag, text) for text in weights]
    if len(values) == 1:
        values *= 2
    return LoraRequest(name.strip(), *values)


def parse_lora_tags(prompt: str) -> tuple[str, list[LoraRequest]]:
    """(prompt without its LoRA tags, the tags in order); a LoraError for a malformed tag."""
    tags = [_tag(match) for match in _TAG_RE.finditer(prompt)]
    return _TAG_RE.sub("", prompt), tags
