"""The procedural shapes dataset: deterministic, covering every label, varied captions."""

from collections import Counter

import numpy as np
import pytest

from training.shapes import (
    COLOURS, POSITIONS, SHAPES, SIZES, ShapeLabel, caption_for, make_sample, render, samples,
)

N = 1500


@pytest.fixture(scope="module")
def dataset():
    return list(samples(seed=7, count=N))


def test_same_seed_and_index_give_the_same_sample():
    a, b = make_sample(3, 41), make_sample(3, 41)
    assert a.caption == b.caption and a.label == b.label
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_a_sample_does_not_depend_on_order_or_range():
    window = list(samples(seed=3, count=5, start=40))
    for offset, sample in enumerate(window):
        alone = make_sample(3, 40 + offset)
        assert sample.caption == alone.caption
        assert np.array_equal(np.asarray(sample.image), np.asarray(alone.image))


def test_different_seeds_give_different_data():
    a = [make_sample(0, i) for i in range(20)]
    b = [make_sample(1, i) for i in range(20)]
    assert [s.caption for s in a] != [s.caption for s in b]
    assert any(not np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))


def test_images_are_64x64_rgb(dataset):
    assert all(s.image.size == (64, 64) and s.image.mode == "RGB" for s in dataset[:50])


def test_every_label_value_occurs(dataset):
    labels = [s.label for s in dataset]
    assert {l.shape for l in labels} == set(SHAPES) >= {"circle", "square", "triangle", "star"}
    assert {l.colour for l in labels} == set(COLOURS) and len(COLOURS) >= 8
    assert {l.background for l in labels} == set(COLOURS)
    assert {l.size for l in labels} == set(SIZES) and len(SIZES) >= 3
    assert {l.position for l in labels} == set(POSITIONS) and len(POSITIONS) >= 5
    # roughly uniform: no colour is starved
    assert min(Counter(l.colour for l in labels).values()) > N / len(COLOURS) / 2


def test_background_differs_from_foreground(dataset):
    assert all(s.label.background != s.label.colour for s in dataset)


def test_pixels_show_the_label(dataset):
    for s in dataset[:200]:
        pixels = np.asarray(s.image).reshape(-1, 3)
        fg = np.all(pixels == COLOURS[s.label.colour], axis=1).sum()
        bg = np.all(pixels == COLOURS[s.label.background], axis=1).sum()
        assert fg > 40, s.label  # the smallest shape still has a solid core
        assert bg > 64 * 64 / 2, s.label


def test_shapes_keep_clear_of_the_border(dataset):
    for s in dataset:
        image = np.asarray(s.image)
        ring = np.concatenate([image[:2].reshape(-1, 3), image[-2:].reshape(-1, 3),
                               image[:, :2].reshape(-1, 3), image[:, -2:].reshape(-1, 3)])
        assert np.all(ring == COLOURS[s.label.background]), s.label


def test_size_and_position_are_visible():
    def extent_and_centre(label):
        image = np.asarray(render(label))
        ys, xs = np.nonzero(np.any(image != COLOURS[label.background], axis=2))
        return xs.max() - xs.min(), ((xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2)

    widths = [extent_and_centre(ShapeLabel("square", "red", "blue", size, "center"))[0] for size in SIZES]
    assert widths == sorted(widths) and widths[0] < widths[-1] / 1.5
    _, (x, y) = extent_and_centre(ShapeLabel("star", "red", "blue", "small", "top left"))
    assert x < 20 and y < 20
    _, (x, y) = extent_and_centre(ShapeLabel("star", "red", "blue", "small", "bottom right"))
    assert x > 44 and y > 44


def test_captions_name_colour_shape_and_background(dataset):
    for s in dataset:
        words = s.caption.replace(",", " ").split()
        assert s.label.colour in words and s.label.shape in words and s.label.background in words, s.caption
        assert words.index(s.label.colour) + 1 == words.index(s.label.shape), s.caption


def test_captions_vary(dataset):
    captions = [s.caption for s in dataset]
    assert len(set(captions)) > 0.8 * len(captions)
    # the same label gets many phrasings, with and without size and position
    rng = np.random.default_rng(0)
    label = ShapeLabel("star", "green", "white", "small", "top left")
    phrasings = {caption_for(label, rng) for _ in range(3000)}
    assert len(phrasings) > 50
    assert "small green star in the top left corner, white background" in phrasings
    assert any("small" not in p and "left" not in p for p in phrasings)
    circle = ShapeLabel("circle", "red", "blue", "medium", "center")
    assert "a red circle on a blue background" in {caption_for(circle, rng) for _ in range(3000)}


def test_articles_agree():
    rng = np.random.default_rng(1)
    label = ShapeLabel("circle", "orange", "blue", "large", "center")
    for _ in range(300):
        caption = caption_for(label, rng)
        assert " a orange" not in f" {caption}" and " an large" not in f" {caption}", caption


def test_render_rejects_unknown_names():
    with pytest.raises(ValueError, match="shape 'hexagon' is not one of"):
        render(ShapeLabel("hexagon", "red", "blue", "small", "center"))
    with pytest.raises(ValueError, match="colour 'teal' is not one of"):
        render(ShapeLabel("circle", "teal", "blue", "small", "center"))
