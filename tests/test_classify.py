"""The shapes classifier: exact on clean dataset pictures, robust to the blur and noise of generated ones."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from training.classify import UNKNOWN, classify
from training.shapes import COLOURS, ShapeLabel, render, samples

FIELDS = ("shape", "colour", "background", "size", "position")


@pytest.fixture(scope="module")
def dataset():
    return list(samples(seed=11, count=300))


def accuracy(dataset, degrade) -> dict[str, float]:
    rng = np.random.default_rng(0)
    predictions = [classify(degrade(s.image, rng)) for s in dataset]
    return {f: np.mean([getattr(p, f) == getattr(s.label, f) for p, s in zip(predictions, dataset)]) for f in FIELDS}


def add_noise(image, rng, sigma=20.0):
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0, sigma, (*image.size[::-1], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def generated_look(image, rng):
    """Soft edges, a colour cast, a brightness shift and grain, as an undertrained model would draw."""
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float64)
    pixels = pixels * rng.uniform(0.85, 1.1, 3) + rng.normal(0, 10, 3) + rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_clean_pictures_are_classified_exactly(dataset):
    assert accuracy(dataset, lambda image, rng: image) == {f: 1.0 for f in FIELDS}


@pytest.mark.parametrize("name, degrade", [
    ("blur", lambda image, rng: image.filter(ImageFilter.GaussianBlur(1.5))),
    ("noise", add_noise),
    ("half resolution", lambda image, rng: image.resize((32, 32), Image.BILINEAR).resize((64, 64), Image.BICUBIC)),
    ("generated look", generated_look),
])
def test_degraded_pictures(dataset, name, degrade):
    scores = accuracy(dataset, degrade)
    assert scores["colour"] >= 0.98 and scores["background"] >= 0.98, (name, scores)
    assert scores["shape"] >= 0.95, (name, scores)
    assert scores["size"] >= 0.9 and scores["position"] >= 0.95, (name, scores)


def test_quarter_resolution_still_mostly_right(dataset):
    """16x16 upscaled: small stars become blobs, everything else survives."""
    scores = accuracy(dataset, lambda image, rng: image.resize((16, 16), Image.BILINEAR).resize((64, 64), Image.BICUBIC))
    assert scores["shape"] >= 0.85 and scores["colour"] >= 0.98 and scores["background"] >= 0.98, scores


def test_every_shape_colour_pair_on_every_background():
    for shape in ("circle", "square", "triangle", "star"):
        for colour in COLOURS:
            for background in COLOURS:
                if background == colour:
                    continue
                label = ShapeLabel(shape, colour, background, "medium", "center")
                assert classify(render(label)) == label


def test_other_image_sizes():
    label = ShapeLabel("triangle", "yellow", "purple", "large", "bottom left")
    assert classify(render(label, image_size=128)) == label


def test_a_plain_picture_has_no_shape():
    plain = Image.new("RGB", (64, 64), COLOURS["green"])
    assert classify(plain) == ShapeLabel(UNKNOWN, UNKNOWN, "green", UNKNOWN, UNKNOWN)


def test_isolated_specks_are_ignored():
    label = ShapeLabel("square", "white", "black", "medium", "center")
    pixels = np.asarray(render(label)).copy()
    pixels[5, 50] = pixels[60, 3] = COLOURS["white"]
    assert classify(pixels) == label


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"expected a square RGB image of shape \(N, N, 3\), got shape \(64, 32, 3\)"):
        classify(np.zeros((64, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="expected uint8 pixels, got float32"):
        classify(np.zeros((64, 64, 3), dtype=np.float32))
