import dataclasses
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mlx_sd import infotext
from mlx_sd.config import SourceInfo, preset
from mlx_sd.infotext import (
    VERSION,
    Infotext,
    checkpoint_stem,
    format_infotext,
    model_hash,
    model_name,
    parse_infotext,
    quote,
    request_from_infotext,
)
from mlx_sd.request import GenerationRequest

SHA = "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"


def sd15(name="v1-5-pruned-emaonly.safetensors", sha=SHA):
    config = preset("sd15")
    config.source = SourceInfo(name=name, sha256=sha)
    return config


def test_txt2img_exact_format():
    request = GenerationRequest(
        prompt="a photo of a cat", negative_prompt="blurry", steps=20, sampler="DPM++ 2M",
        schedule="Karras", cfg_scale=7.0, width=512, height=768,
    )
    assert format_infotext(request, 1234, sd15()) == (
        "a photo of a cat\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
        f"Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: {VERSION}"
    )


def test_field_order_and_optional_fields():
    request = GenerationRequest(
        prompt="p", cfg_scale=7.5, clip_skip=2, init_image=Image.new("RGB", (64, 64)), strength=0.6,
        mask=Image.new("L", (64, 64)), mask_blur=8,
    )
    text = format_infotext(request, 7, sd15(), extra={"Lora hashes": "a: 0123456789ab, b: ba9876543210"})
    assert "Negative prompt" not in text  # omitted when empty
    line = text.split("\n")[-1]
    keys = [pair.split(": ")[0] for pair in line.split(", ") if ": " in pair]
    assert keys[:9] == [
        "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
        "Denoising strength",
    ]
    assert line.index("Denoising strength: 0.6") < line.index("Clip skip: 2") < line.index("Mask blur: 8")
    assert line.index("Mask blur: 8") < line.index('Lora hashes: "a: 0123456789ab, b: ba9876543210"')
    assert line.endswith(f"Version: {VERSION}")
    assert "CFG scale: 7.5" in line


def test_clip_skip_1_denoising_and_model_are_left_out_when_not_applicable():
    text = format_infotext(GenerationRequest(prompt="p", clip_skip=1), 1)
    assert "Clip skip" not in text and "Denoising strength" not in text and "Mask blur" not in text
    assert "Model hash" not in text and "Model:" not in text
    no_hash = format_infotext(GenerationRequest(prompt="p"), 1, sd15(sha=""))
    assert "Model hash" not in no_hash and "Model: v1-5-pruned-emaonly," in no_hash


def test_model_name_drops_folder_and_checkpoint_extension():
    assert model_name(sd15("/models/sd_xl_base_1.0.safetensors")) == "sd_xl_base_1.0"
    assert model_name(sd15("dreamshaper_8.ckpt")) == "dreamshaper_8"
    assert model_name(sd15("stable-diffusion-v1-5")) == "stable-diffusion-v1-5"


def test_checkpoint_stem_and_model_hash_are_the_one_rule():
    assert checkpoint_stem("C:\\models\\v1-5.CKPT") == "v1-5"
    assert checkpoint_stem("/models/anything-v3.pth") == "anything-v3"
    assert checkpoint_stem("stabilityai/sdxl-turbo") == "sdxl-turbo"
    assert checkpoint_stem("dreamshaper.v8") == "dreamshaper.v8"  # not a checkpoint extension: kept
    assert checkpoint_stem("///") == ""
    assert model_hash(SHA.upper()) == SHA[:10]
    assert model_hash("") == ""


@pytest.mark.parametrize(
    "value, expected",
    [
        ("plain", "plain"),
        (7, "7"),
        ("a: b", '"a: b"'),
        ("a, b", '"a, b"'),
        ("line\nbreak", '"line\\nbreak"'),
        ('say "hi", ok', '"say \\"hi\\", ok"'),
        ("ünï: 日本", '"ünï: 日本"'),  # non-ASCII kept (ensure_ascii=False)
    ],
)
def test_quote(value, expected):
    assert quote(value) == expected


def test_round_trip_write_read_compare():
    request = GenerationRequest(
        prompt="(masterpiece:1.2), a castle, on a hill\nsecond line: with colon",
        negative_prompt="ugly, (blurry:1.3)\nlow quality",
        steps=31, sampler="Euler a", schedule="Automatic", cfg_scale=6.5, seed=0, width=640, height=448,
        clip_skip=2, init_image=Image.new("RGB", (8, 8)), strength=0.35,
    )
    text = format_infotext(request, 4242, sd15(), extra={"Extra key": 'with "quotes", and: colon'})
    info = parse_infotext(text)
    assert info.prompt == request.prompt
    assert info.negative_prompt == request.negative_prompt
    assert info.params["Steps"] == "31"
    assert info.params["Size-1"] == "640" and info.params["Size-2"] == "448"
    assert info.params["Extra key"] == 'with "quotes", and: colon'
    assert info.params["Model hash"] == SHA[:10]
    back = request_from_infotext(text, GenerationRequest(batch_size=3))
    expected = dataclasses.replace(request, seed=4242, batch_size=3, init_image=None)
    assert back == expected


def test_round_trip_defaults_and_empty_prompt():
    request = GenerationRequest()
    text = format_infotext(request, 99)
    assert text.startswith("Steps: 20, Sampler: DPM++ 2M, Schedule type: Automatic, CFG scale: 7, Seed: 99")
    assert request_from_infotext(text) == dataclasses.replace(request, seed=99)


# Infotexts written by hand from A1111's format (docs/facts.md §6.2), as different A1111 versions emit them.
A1111_V110 = """masterpiece, best quality, 1girl, (looking at viewer:1.2), <lora:detail:0.6>
outdoors, cherry blossoms
Negative prompt: (worst quality, low quality:1.4), bad hands
BREAK watermark
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3804413437, Size: 832x1216, \
Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 1.5, \
Hires steps: 10, Hires upscaler: R-ESRGAN 4x+ Anime6B, Lora hashes: "detail: 0123456789ab", \
TI hashes: "easynegative: c74b4e810b03, badhand: 0123abcd4567", Emphasis: No norm, Version: v1.10.1"""

A1111_OLD = """a portrait of an old man, highly detailed
Negative prompt: cartoon
Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"""

A1111_NO_NEGATIVE = """a landscape
Steps: 50, Sampler: Euler a, CFG scale: 12, Seed: 1, Size: 768x512, Model hash: e6e99610c4, ENSD: 31337"""


def test_real_a1111_v110_infotext():
    info = parse_infotext(A1111_V110)
    assert info.prompt == (
        "masterpiece, best quality, 1girl, (looking at viewer:1.2), <lora:detail:0.6>\noutdoors, cherry blossoms"
    )
    assert info.negative_prompt == "(worst quality, low quality:1.4), bad hands\nBREAK watermark"
    assert info.params["Lora hashes"] == "detail: 0123456789ab"
    assert info.params["TI hashes"] == "easynegative: c74b4e810b03, badhand: 0123abcd4567"
    assert info.params["Hires upscaler"] == "R-ESRGAN 4x+ Anime6B"
    assert info.params["Emphasis"] == "No norm"
    assert info.params["Version"] == "v1.10.1"
    request = request_from_infotext(info)
    assert (request.steps, request.sampler, request.schedule) == (28, "DPM++ 2M", "Karras")
    assert (request.cfg_scale, request.seed, request.width, request.height) == (6.5, 3804413437, 832, 1216)
    assert (request.strength, request.clip_skip) == (0.45, 2)
    assert request.negative_prompt.endswith("BREAK watermark")


def test_old_combined_sampler_name_and_missing_schedule_type():
    request = request_from_infotext(A1111_OLD, GenerationRequest(schedule="Exponential", clip_skip=2))
    assert (request.sampler, request.schedule) == ("DPM++ 2M", "Karras")
    assert request.clip_skip == 1  # missing Clip skip means 1
    assert parse_infotext(A1111_OLD).params["Model hash"] == "45dee52b"  # old 8-hex hash kept as text
    plain = request_from_infotext(A1111_NO_NEGATIVE, GenerationRequest(schedule="Exponential", strength=0.3))
    assert (plain.sampler, plain.schedule) == ("Euler a", "Automatic")  # missing Schedule type
    assert plain.negative_prompt == "" and plain.strength == 0.3  # no Denoising strength: base kept
    assert parse_infotext(A1111_NO_NEGATIVE).params["ENSD"] == "31337"


@pytest.mark.parametrize(
    "sampler_field, expected",
    [
        ("Sampler: DPM++ 2M Karras, Schedule type: Exponential", ("DPM++ 2M", "Karras")),  # the name wins
        ("Sampler: DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
        ("Sampler: dpm++ sde karras", ("DPM++ SDE", "Karras")),
        ("Sampler: Euler SGM Uniform", ("Euler", "SGM Uniform")),
        ("Sampler: Euler a", ("Euler a", "Automatic")),
        ("Sampler: DDIM, Schedule type: Uniform", ("DDIM", "Uniform")),
        ("Sampler: UniPC, Schedule type: Karras", ("UniPC", "Karras")),  # unknown names are kept
    ],
)
def test_sampler_and_schedule_names(sampler_field, expected):
    request = request_from_infotext(f"p\nSteps: 20, {sampler_field}, Seed: 1", GenerationRequest(schedule="Simple"))
    assert (request.sampler, request.schedule) == expected


def test_text_without_parameter_line_is_all_prompt_and_keeps_base():
    base = GenerationRequest(steps=33, schedule="Karras", clip_skip=2)
    text = "just a prompt\nSteps: 20, Seed: 5"  # fewer than 3 pairs: not a parameter line
    info = parse_infotext(text)
    assert info == Infotext(prompt="just a prompt\nSteps: 20, Seed: 5")
    assert request_from_infotext(text, base) == dataclasses.replace(base, prompt=info.prompt)


def test_unparseable_values_keep_base():
    text = "p\nSteps: many, Sampler: Euler, CFG scale: high, Seed: 12.5, Size: bigxsmall, Clip skip: x"
    base = GenerationRequest(steps=9, cfg_scale=3.0, seed=77, width=640, clip_skip=3)
    request = request_from_infotext(text, base)
    assert (request.steps, request.cfg_scale, request.seed, request.width, request.clip_skip) == (9, 3.0, 77, 640, 3)
    assert parse_infotext(text).params["Size"] == "bigxsmall"


def test_empty_value_and_crlf():
    info = parse_infotext("a\r\nSteps: 20, Model: , Seed: 3, Size: 64x64\r\n")
    assert info.prompt == "a"
    assert "Model" not in info.params and info.params["Seed"] == "3"


infotext_like = st.lists(
    st.one_of(
        st.sampled_from(["Negative prompt:", "Steps: 20", ", ", ": ", '"', "\\", "\n", "Size: 64x64", "x"]),
        st.text(max_size=8),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(infotext_like)
def test_malformed_text_never_crashes(text):
    info = parse_infotext(text)
    assert isinstance(info.prompt, str) and isinstance(info.negative_prompt, str)
    request = request_from_infotext(text)
    assert isinstance(request, GenerationRequest)


@settings(max_examples=150, deadline=None)
@given(
    st.text(min_size=1).map(str.strip).filter(lambda s: s and not s.startswith("Negative prompt:")),
    st.text().map(str.strip),
    st.integers(0, 2**32 - 1),
    st.floats(0, 30, allow_nan=False).map(lambda f: round(f, 2)),
)
def test_fuzz_round_trip_single_line_prompts(prompt, negative, seed, cfg):
    prompt, negative = prompt.replace("\n", " ").replace("\r", " "), negative.replace("\n", " ").replace("\r", " ")
    request = GenerationRequest(prompt=prompt, negative_prompt=negative, cfg_scale=cfg)
    back = request_from_infotext(format_infotext(request, seed))
    if len(parse_infotext(prompt).params) < 3:  # a prompt that itself looks like a parameter line is ambiguous
        assert (back.prompt, back.negative_prompt, back.seed, back.cfg_scale) == (
            prompt.strip(), negative.strip(), seed, cfg
        )


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_request_survives_an_image_file(tmp_path, suffix):
    from mlx_sd.image_metadata import read_infotext, save_image

    request = GenerationRequest(
        prompt="ein Café, (Öl auf Leinwand:1.2)\n日本画", negative_prompt="blurry", steps=12, sampler="Euler a",
        cfg_scale=4.5, width=576, height=704, clip_skip=2,
    )
    path = save_image(Image.new("RGB", (32, 32)), tmp_path / f"out{suffix}", format_infotext(request, 5, sd15()),
                      durable=True)
    assert request_from_infotext(read_infotext(path)) == dataclasses.replace(request, seed=5)


# -- linear time (issue 15) -----------------------------------------------------------------------

# A1111's pattern for the pairs of the parameter line: the reference `_pairs` must agree with. Its
# search is quadratic in a run of key characters, so it only sees short lines here.
A1111_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
PAIR_PIECES = ["a", "b1", "Steps", " ", "\t", ":", ",", '"', "\\", "-", "/", "x y", "é", "12x34", ": ", ", "]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(PAIR_PIECES), max_size=30).map("".join) | st.text(max_size=40), max_size=10))
def test_pairs_are_those_a1111_finds(lines):
    for line in lines:  # several lines per example: thousands of lines in all, cheaply
        assert infotext._pairs(line) == A1111_PAIR.findall(line)


@pytest.mark.parametrize(
    "line",
    [
        "a" * 1_000_000,  # the case: one long word, no `key: value`
        "ab cd-ef/" * 111_111,  # key characters of every kind
        " " * 1_000_000,
        "a:" * 500_000,
        'a: "' * 250_000,  # quotes that never close
        "a\tb" * 333_333,
        "Steps: 20, " * 90_000,  # a real parameter line, 1 MB of it
    ],
    ids=["word", "key-chars", "spaces", "colons", "open-quotes", "tabs", "pairs"],
)
def test_a_1mb_line_parses_in_well_under_a_second(line):
    started = time.perf_counter()
    parse_infotext(f"a prompt\n{line}")
    # Linear time: about 0.4 s here at most, where A1111's quadratic regex takes about an hour; the bound is
    # generous so that a loaded CI machine cannot fail it.
    assert time.perf_counter() - started < 15
