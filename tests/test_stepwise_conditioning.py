"""Prompt editing and alternation in generation (mlx_sd.stepwise_conditioning): one encode per distinct
pair of texts, A1111's per-model-call choice, and whole generations on a tiny model."""

from __future__ import annotations

import numpy as np
from test_generate_models import (  # noqa: F401
    model_folders,
    pipes,
    request,
)

import mlx.core as mx
from mlx_sd.stepwise_conditioning import StepwiseDenoiser, conditioning_schedule, stepwise


def test_each_distinct_pair_of_texts_is_encoded_once():
    encoded = []

    def encode(prompt, negative):
        encoded.append((prompt, negative))
        return (prompt, negative)

    schedule = conditioning_schedule(request(prompt="[a|b] cat", negative_prompt="[x:y:3]", steps=6), encode)
    assert [end for end, _ in schedule] == [1, 2, 3, 4, 5, 6]
    assert [texts for _, texts in schedule] == [
        ("a cat", "x"), ("b cat", "x"), ("a cat", "x"), ("b cat", "y"), ("a cat", "y"), ("b cat", "y"),
    ]
    assert sorted(encoded) == [("a cat", "x"), ("a cat", "y"), ("b cat", "x"), ("b cat", "y")]
    plain = conditioning_schedule(request(prompt="a cat", negative_prompt="", steps=6), encode)
    assert plain == [(6, ("a cat", ""))]


def test_and_parts_are_scheduled_one_by_one():
    schedule = conditioning_schedule(request(prompt="[a AND b:c:2] AND [x:y:2] :0.5", steps=4), lambda p, n: p)
    assert schedule == [(2, "[a :1 AND b:c:2] :1 AND x :0.5"), (4, "[a :1 AND b:c:2] :1 AND y :0.5")]


class Named:
    cfg_scale = 7.0

    def __init__(self, name):
        self.name = name

    def __call__(self, x, sigma):
        return self.name

    def predictions(self, x, sigma):
        return None, self.name


def test_the_denoiser_follows_a1111s_model_call_count():
    denoiser = StepwiseDenoiser([(2, Named("a")), (4, Named("b"))])
    assert [denoiser(mx.zeros(1), 1.0) for _ in range(7)] == ["a", "a", "a", "b", "b", "a", "a"]
    assert denoiser.predictions(mx.zeros(1), 1.0)[1] == "a" and denoiser.cfg_scale == 7.0
    single = Named("only")
    assert stepwise([(4, single)]) is single


def test_generations_switch_prompts(pipes):
    pipe = pipes["sd1"]
    red, blue = "a red circle on a blue background", "a blue circle on a red background"
    images = {
        prompt: np.asarray(pipe.generate(request(prompt=prompt, steps=4)).images[0], dtype=np.int16)
        for prompt in (red, blue, f"[{red}:{blue}:0]", f"[{red}:{blue}:9]", f"[{red}:{blue}:2]")
    }
    assert np.array_equal(images[f"[{red}:{blue}:0]"], images[blue])  # switched before the first step
    assert np.array_equal(images[f"[{red}:{blue}:9]"], images[red])  # never switched
    edited = images[f"[{red}:{blue}:2]"]
    assert not np.array_equal(edited, images[red]) and not np.array_equal(edited, images[blue])
