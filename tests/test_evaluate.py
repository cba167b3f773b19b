"""Scoring generators on the shapes grid (the demo model's quality test calls these)."""

from collections import Counter

import numpy as np
from PIL import Image

from training.evaluate import IMG2IMG_SOURCES, contact_sheet, evaluate, grid_cases, img2img_check, prompt_for
from training.shapes import COLOURS, SHAPES, ShapeLabel, render


def perfect(prompt: str, seed: int) -> Image.Image:
    """What a flawless model draws: parse the prompt back into a label."""
    words = prompt.split()  # a {colour} {shape} on a {background} background
    return render(ShapeLabel(words[2], words[1], words[5], ("small", "medium", "large")[seed % 3], "center"))


def test_the_grid_covers_every_colour_shape_and_background():
    cases = grid_cases(seeds=(0, 1), backgrounds_per_pair=2)
    assert len(cases) == len(COLOURS) * len(SHAPES) * 2 * 2
    assert {(c.colour, c.shape) for c in cases} == {(c, s) for c in COLOURS for s in SHAPES}
    assert {c.background for c in cases} == set(COLOURS)
    assert all(c.background != c.colour for c in cases)
    assert Counter(c.seed for c in cases) == {0: len(cases) // 2, 1: len(cases) // 2}
    assert cases[0].prompt == prompt_for(cases[0].colour, cases[0].shape, cases[0].background)


def test_a_perfect_generator_scores_full_marks():
    scores, images = evaluate(perfect, grid_cases())
    assert (scores.foreground, scores.background, scores.shape) == (1.0, 1.0, 1.0)
    assert len(images) == scores.count == 128


def test_a_generator_that_ignores_the_prompt_scores_near_chance():
    rng = np.random.default_rng(0)
    names = list(COLOURS)

    def random_picture(prompt: str, seed: int) -> Image.Image:
        colour, background = rng.choice(names, size=2, replace=False)
        return render(ShapeLabel(str(rng.choice(SHAPES)), str(colour), str(background), "medium", "center"))

    scores, _ = evaluate(random_picture, grid_cases())
    assert scores.shape < 0.45 and scores.foreground < 0.3 and scores.background < 0.3


def test_a_constant_picture_is_right_only_where_it_happens_to_match():
    red_circle = render(ShapeLabel("circle", "red", "blue", "medium", "center"))
    scores, _ = evaluate(lambda prompt, seed: red_circle, grid_cases())
    assert scores.shape == 0.25
    assert scores.foreground == 1 / len(COLOURS)


def test_img2img_check_measures_change_and_content():
    target = render(ShapeLabel("square", "yellow", "blue", "large", "center"))

    def fake_img2img(image, prompt, strength, seed):
        return image if strength < 0.5 else target

    sources, results = img2img_check(fake_img2img, strengths=(0.2, 0.8))
    assert len(sources) == len(IMG2IMG_SOURCES) and sources[0].size == (64, 64)
    assert len(results) == 2 * len(sources)
    low, high = results[:2]
    assert (low.source, low.strength, high.strength) == (IMG2IMG_SOURCES[0], 0.2, 0.8)
    assert low.mean_abs_change == 0.0 and low.kept_everything and low.prediction.shape == "circle"
    assert high.mean_abs_change > 20 and (high.prediction.shape, high.prediction.colour) == ("square", "yellow")
    assert not high.kept_composition


def test_contact_sheet_layout():
    images = [Image.new("RGB", (64, 64), COLOURS[c]) for c in COLOURS]
    sheet = contact_sheet(images, columns=3)
    assert sheet.size == (3 * 64, 3 * 64)
    assert sheet.getpixel((64 + 5, 5)) == COLOURS[list(COLOURS)[1]]
