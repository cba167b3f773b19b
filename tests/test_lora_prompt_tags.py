import time

import pytest

from mlx_sd.lora import LoraError
from mlx_sd.lora.prompt_tags import parse_lora_tags
from mlx_sd.request import LoraRequest


@pytest.mark.parametrize(
    "prompt, text, tags",
    [
        ("a cat <lora:pixel:0.8>", "a cat ", [LoraRequest("pixel", 0.8, 0.8)]),
        ("<lora:pixel>, a cat", ", a cat", [LoraRequest("pixel", 1.0, 1.0)]),
        ("a <lora:a b:-1> cat <lora:x:0.25:0.5>", "a  cat ", [LoraRequest("a b", -1.0, -1.0), LoraRequest("x", 0.25, 0.5)]),
        ("no tags (at:1.2) <hypernet:x:1>", "no tags (at:1.2) <hypernet:x:1>", []),
        ("<lora:zero:0>", "", [LoraRequest("zero", 0.0, 0.0)]),
    ],
)
def test_tags_are_parsed_and_removed(prompt, text, tags):
    assert parse_lora_tags(prompt) == (text, tags)


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("<lora:pixel:strong>", r"^<lora:pixel:strong>: the weight 'strong' is not a number$"),
        ("<lora::1>", "needs a name"),
        ("<lora:a:1:2:3>", "at most two weights"),
        ("<lora:a:nan>", "not a number"),
    ],
)
def test_malformed_tags_are_one_line(prompt, message):
    with pytest.raises(LoraError, match=message):
        parse_lora_tags(prompt)


def test_linear_time_on_hostile_prompts():
    for prompt in ("<lora:" * 50_000, "<lora:a" + ":" * 100_000 + "x", "<" * 100_000 + ">"):
        start = time.perf_counter()
        try:
            parse_lora_tags(prompt)
        except LoraError:
            pass
        assert time.perf_counter() - start < 0.5
