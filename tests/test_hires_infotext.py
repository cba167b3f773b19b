"""Hires fix's infotext keys as A1111 writes them, and read back into the request."""

from __future__ import annotations

import dataclasses

import pytest

from mlx_sd.infotext import format_infotext, parse_infotext, request_from_infotext
from mlx_sd.request import GenerationRequest

BASE = GenerationRequest(prompt="a castle", negative_prompt="blurry", width=512, height=768, steps=20, seed=5)
HIRES_FIELDS = [f.name for f in dataclasses.fields(GenerationRequest) if f.name.startswith("hires_")]


@pytest.mark.parametrize("changes", [
    {"hires_scale": 2.0},
    {"hires_scale": 1.5, "hires_steps": 12, "hires_denoise": 0.45, "hires_upscaler": "Latent (bicubic antialiased)"},
    {"hires_width": 1024, "hires_height": 1024, "hires_upscaler": "Lanczos"},
    {"hires_height": 1152, "hires_upscaler": "4x-UltraSharp", "hires_sampler": "Euler a"},
    {"hires_scale": 2.0, "hires_prompt": "a castle, detailed: sharp", "hires_negative": "lowres, blurry"},
])
def test_hires_fields_survive_a_round_trip(changes) -> None:
    request = dataclasses.replace(BASE, **changes)
    text = format_infotext(request, 5)
    back = request_from_infotext(text)
    assert {name: getattr(back, name) for name in HIRES_FIELDS} == {name: getattr(request, name) for name in HIRES_FIELDS}


def test_keys_follow_a1111() -> None:
    text = format_infotext(dataclasses.replace(
        BASE, hires_scale=2.0, hires_steps=10, hires_upscaler="latent (nearest)", hires_sampler="euler a",
        hires_prompt="a castle", hires_negative="blurry, dark",
    ), 5)
    params = parse_infotext(text).params
    assert params["Denoising strength"] == "0.7" and params["Hires upscale"] == "2" and params["Hires steps"] == "10"
    assert params["Hires upscaler"] == "Latent (nearest)" and params["Hires sampler"] == "Euler a"
    assert params["Hires negative prompt"] == "blurry, dark" and "Hires prompt" not in params  # same as the prompt
    assert list(params).index("Hires sampler") < list(params).index("Hires upscale") < list(params).index("Hires upscaler")
    model_file = format_infotext(dataclasses.replace(BASE, hires_scale=2.0, hires_upscaler="/models/upscalers/4x-Remacri.pth"), 5)
    assert "Hires upscaler: 4x-Remacri," in model_file


def test_no_hires_keys_means_hires_off() -> None:
    assert "Hires" not in format_infotext(BASE, 5) and "Denoising strength" not in format_infotext(BASE, 5)
    on = dataclasses.replace(BASE, hires_scale=2.0, hires_steps=9)
    back = request_from_infotext(format_infotext(BASE, 5), base=on)
    assert (back.hires_scale, back.hires_steps) == (0.0, 0)


def test_an_a1111_hires_infotext_is_read() -> None:
    text = (
        "masterpiece\nNegative prompt: bad\nSteps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, Seed: 1, "
        "Size: 512x512, Model hash: abc, Denoising strength: 0.55, Hires resize: 1024x768, Hires steps: 15, "
        "Hires upscaler: R-ESRGAN 4x+, Version: v1.9.0"
    )
    back = request_from_infotext(text)
    assert (back.hires_width, back.hires_height, back.hires_steps, back.hires_denoise) == (1024, 768, 15, 0.55)
    assert back.hires_upscaler == "R-ESRGAN 4x+" and back.hires_scale == 0.0
