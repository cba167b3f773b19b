"""`AND` (mlx_sd.composable): A1111's splitting and weights, its guidance formula checked by hand on a
tiny model's predictions, and whole generations."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from test_cli_generate import generate, model  # noqa: F401
from test_generate_models import (  # noqa: F401
    model_folders,
    pipes,
    request,
)

import mlx.core as mx
from mlx_sd.composable import (
    ComposableConditioning,
    ComposableDenoiser,
    PromptParts,
    composed_prompt,
    denoiser_for,
    part_schedule,
    prompt_parts,
)
from mlx_sd.denoiser import Conditioning, Denoiser
from mlx_sd.generation import _conditioning
from mlx_sd.schedules import NoiseSchedule


@pytest.mark.parametrize(
    ("prompt", "texts", "weights", "composable"),
    [
        ("a cat", ("a cat",), (1.0,), False),
        ("a cat  ", ("a cat  ",), (1.0,), False),  # written as is: identical to before
        ("a castle :1.2 AND a forest :0.8", ("a castle", " a forest"), (1.2, 0.8), True),
        ("a castle AND a forest", ("a castle", " a forest"), (1.0, 1.0), True),
        ("a cat: 1.5", ("a cat",), (1.5,), True),
        ("a cat :-.5 AND dog:+2.", ("a cat", " dog"), (-0.5, 2.0), True),
        ("ANDROID and a BAND", ("ANDROID and a BAND",), (1.0,), False),  # only the word AND splits
        ("(a cat:1.2)", ("(a cat:1.2)",), (1.0,), False),  # emphasis, not a part weight
        ("a: b:3 AND c:x", ("a: b", " c:x"), (3.0, 1.0), True),
        ("AND", ("", ""), (1.0, 1.0), True),
        # A1111's weight pattern cannot cross a line break: such a part keeps its `:weight` as text
        ("a\nb :2 AND c", ("a\nb :2", " c"), (1.0, 1.0), True),
        ("a AND\n b :2\n", ("a", "\n b"), (1.0, 2.0), True),
    ],
)
def test_prompts_split_as_a1111_splits_them(prompt, texts, weights, composable):
    assert prompt_parts(prompt) == PromptParts(texts, weights, composable)


def _scheduled_parts(prompt: str, steps: int) -> list[tuple[int, PromptParts]]:
    return [(end, prompt_parts(text)) for end, text in part_schedule(prompt, steps)]


def test_and_splits_before_editing_as_in_a1111():
    # A1111 (modules/prompt_parser.py) splits on AND, then schedules each part: `[a` and ` b:c:5]` are
    # unclosed and stray brackets, plain text for all 10 steps, not an edit from `a AND b` to `c` at step 5
    assert _scheduled_parts("[a AND b:c:5]", 10) == [(10, PromptParts(("[a", " b:c:5]"), (1.0, 1.0), True))]
    # each part has its own schedule, and its weight is read before its editing
    assert _scheduled_parts("[cat:dog:3] AND forest [x|y]:0.5", 4) == [
        (1, PromptParts(("cat", " forest x"), (1.0, 0.5), True)),
        (2, PromptParts(("cat", " forest y"), (1.0, 0.5), True)),
        (3, PromptParts(("cat", " forest x"), (1.0, 0.5), True)),
        (4, PromptParts(("dog", " forest y"), (1.0, 0.5), True)),
    ]
    # a number that editing leaves at a part's end is text, not a weight; line breaks keep A1111's rule
    assert _scheduled_parts("a AND b:[1:2:3]", 5) == [
        (3, PromptParts(("a", " b:1"), (1.0, 1.0), True)), (5, PromptParts(("a", " b:2"), (1.0, 1.0), True)),
    ]
    assert _scheduled_parts("a\nb :2 AND c :0.00001", 5) == [(5, PromptParts(("a\nb :2", " c"), (1.0, 1e-05), True))]
    # without AND the prompt is scheduled as written
    assert part_schedule("a [cat:dog:2]", 4) == [(2, "a cat"), (4, "a dog")]


def test_the_exact_join_reads_back_every_weight():
    weights = [1 / 3, 1e-7, -2.5, 12345.678901234]
    parts = [(f"part{i}", w) for i, w in enumerate(weights)]
    assert prompt_parts(composed_prompt(parts, exact=True)).weights == tuple(weights)
    assert composed_prompt([("a zombie", 1 / 3), ("a clown", 2 / 3)]) == "a zombie :0.333333 AND a clown :0.666667"


def test_splitting_is_linear_time():
    for hostile in (":1" * 100_000, "AND " * 100_000, ":" + "1" * 200_000 + "x", (": " + " " * 50) * 4_000):
        started = time.perf_counter()
        prompt_parts(hostile)
        assert time.perf_counter() - started < 1.0


def _make(pipe):
    schedule = NoiseSchedule.from_config(pipe.config.noise_schedule)
    return lambda conditioning: Denoiser(pipe.unet, schedule, conditioning, pipe.config.prediction_type)


@pytest.mark.parametrize("cfg_scale", [5.0, 1.0])
def test_guidance_is_a1111s_formula(pipes, cfg_scale):
    pipe = pipes["sd1"]
    make = _make(pipe)
    base = request(negative_prompt="blurry", cfg_scale=cfg_scale)

    def guided(prompt):
        return _conditioning(pipe, dataclasses.replace(base, prompt=prompt), None)

    x = mx.random.normal((1, 8, 8, 4), key=mx.random.key(3)) * 4.0
    sigma = 4.0
    # each part alone, with the negative prompt (cfg 7 so that the negative branch runs)
    alone = {
        text: _with_negative(pipe, base, text)
        for text in ("a red circle", "a blue square")
    }
    (uncond, red), (_, blue) = (alone[t].predictions(x, sigma) for t in ("a red circle", "a blue square"))
    composable = denoiser_for(guided("a red circle :1.5 AND a blue square :-0.5"), make)
    assert isinstance(composable, ComposableDenoiser)
    expected = uncond + (red - uncond) * (1.5 * cfg_scale) + (blue - uncond) * (-0.5 * cfg_scale)
    assert np.allclose(np.array(composable(x, sigma)), np.array(expected), atol=1e-3)  # UNet batches of 3 vs 2 rows
    negative, positive = composable.predictions(x, sigma)
    assert np.allclose(np.array(negative + (positive - negative) * cfg_scale), np.array(expected), atol=1e-3)  # UNet batches of 3 vs 2 rows
    assert np.abs(np.array(expected - (uncond + (red - uncond) * cfg_scale))).max() > 0.1


def _with_negative(pipe, base, text):
    conditioning = _conditioning(pipe, dataclasses.replace(base, prompt=text, cfg_scale=7.0), None)
    return _make(pipe)(conditioning)


def test_a_prompt_without_and_is_encoded_as_before(pipes):
    pipe = pipes["sd1"]
    conditioning = _conditioning(pipe, request(prompt="a red circle", negative_prompt="blurry", cfg_scale=7.0), None)
    assert isinstance(conditioning, Conditioning)
    positive, negative = pipe.prompt_encoder().encode_for_guidance(["a red circle"], ["blurry"])
    assert np.array_equal(np.array(conditioning.context), np.array(positive.context))
    assert np.array_equal(np.array(conditioning.negative_context), np.array(negative.context))


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd1-inpaint"])
def test_generations_compose_the_parts(pipes, family):
    pipe = pipes[family]
    red = "a red circle on a blue background"
    conditioning = _conditioning(pipe, request(prompt=f"{red} AND a cat :0.5", batch_size=2), None)
    assert isinstance(conditioning, ComposableConditioning)
    assert conditioning.rows.context.shape[0] == 6  # negative, part 1, part 2; two images each

    def image(prompt, **changes):
        return np.asarray(pipe.generate(request(prompt=prompt, **changes)).images[0], dtype=np.int16)

    plain, weighted = image(red), image(f"{red} :1")
    assert np.abs(plain - weighted).max() <= 2  # one part of weight 1 is ordinary guidance
    assert not np.array_equal(image(f"{red} AND a cat"), plain)
    assert image(f"{red} AND a cat", sampler="DDIM CFG++").shape == plain.shape


def test_the_cli_does_not_call_the_negative_prompt_useless_with_and(capsys, model, tmp_path):
    code, paths, err = generate(
        capsys, model, tmp_path / "out", "a cube AND a ball", "--negative", "blurry", "--cfg", "1", "--steps", "1"
    )
    assert code == 0 and len(paths) == 1 and "warning" not in err


def test_the_embedding_blend_conditions_on_the_weighted_sum_of_the_encodings(pipes):
    pipe = pipes["sdxl"]
    base = request(negative_prompt="blurry", and_blend="embedding", batch_size=2)
    blended = _conditioning(pipe, dataclasses.replace(base, prompt="a red circle :0.25 AND a blue square :0.75"), None)
    assert isinstance(blended, Conditioning) and blended.context.shape[0] == 2
    red, blue = (_conditioning(pipe, dataclasses.replace(base, prompt=p), None) for p in ("a red circle", "a blue square"))
    assert np.allclose(np.array(blended.context), np.array(red.context * 0.25 + blue.context * 0.75), atol=1e-6)
    for key in red.extra:
        assert np.allclose(np.array(blended.extra[key]), np.array(red.extra[key] * 0.25 + blue.extra[key] * 0.75), atol=1e-4)
    assert np.array_equal(np.array(blended.negative_context), np.array(red.negative_context))
    result = pipe.generate(dataclasses.replace(base, prompt="a red circle :0.5 AND a blue square :0.5"))
    assert result.images[0].size == (64, 64) and ", Prompt blend: embedding," in result.infotexts[0]
    assert "Prompt blend" not in pipe.generate(dataclasses.replace(base, prompt="a red circle")).infotexts[0]


def test_an_unknown_blend_is_refused():
    with pytest.raises(ValueError, match="and_blend"):
        request(and_blend="average").validate()
