"""The procedural shapes dataset the bundled demo model is trained on.

Every sample is one flat-coloured shape (circle, square, triangle, star) of a named colour on a
background of another named colour, at a named size and position, with a caption in varied natural
phrasing. Sample `index` of dataset `seed` depends on nothing else, so any subset, in any order, is
reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
# Named colours far apart in both RGB and Lab, so a person and a pixel classifier agree on the name.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (245, 220, 40),
    "green": (40, 170, 70),
    "blue": (40, 110, 220),
    "purple": (150, 40, 170),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
# Half the shape's extent as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.15, "medium": 0.22, "large": 0.3}
POSITIONS = ("center", "top left", "top right", "bottom left", "bottom right")

STAR_INNER_RATIO = 0.42  # inner / outer radius: deep enough notches to survive a blurry VAE
MARGIN = 0.06  # gap between a corner shape and the image border, fraction of the side
SUPERSAMPLE = 4  # draw at 4x and box-filter down: anti-aliased edges

_SIZE_WORDS = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}
_POSITION_PHRASES = {
    "center": ("in the center", "in the middle", "in the centre", "centered"),
    "top left": ("in the top left corner", "in the top left", "at the top left", "in the upper left corner"),
    "top right": ("in the top right corner", "in the top right", "at the top right", "in the upper right corner"),
    "bottom left": (
        "in the bottom left corner", "in the bottom left", "at the bottom left", "in the lower left corner",
    ),
    "bottom right": (
        "in the bottom right corner", "in the bottom right", "at the bottom right", "in the lower right corner",
    ),
}
# {a}: indefinite article for the subject, {subject}: "[size ]colour shape", {pos}: " position" or "".
_TEMPLATES = (
    "{a} {subject}{pos} on a {bg} background",
    "{subject}{pos}, {bg} background",
    "{a} {subject}{pos} against a {bg} background",
    "{bg} background with {a} {subject}{pos}",
    "{a} {subject}{pos} on {bg}",
    "a picture of {a} {subject}{pos} on a {bg} background",
    "{subject} on a plain {bg} background{pos}",
    "an image of {a} {subject}{pos}, the background is {bg}",
)


@dataclass(frozen=True)
class ShapeLabel:
    """What a picture shows; the classifier returns the same fields."""

    shape: str
    colour: str
    background: str
    size: str
    position: str


@dataclass(frozen=True)
class ShapeSample:
    image: Image.Image
    caption: str
    label: ShapeLabel


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(label: ShapeLabel, rng: np.random.Generator) -> str:
    """One caption for `label`; size and position are each mentioned half the time."""
    template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    words = [label.colour, label.shape]
    if rng.random() < 0.5:
        size_words = _SIZE_WORDS[label.size]
        words.insert(0, size_words[rng.integers(len(size_words))])
    pos = ""
    if rng.random() < 0.5:
        phrases = _POSITION_PHRASES[label.position]
        pos = " " + phrases[rng.integers(len(phrases))]
    subject = " ".join(words)
    return template.format(a=_article(subject), subject=subject, pos=pos, bg=label.background)


def _polygon(shape: str, radius: float) -> np.ndarray:
    """Vertices (n, 2) of an upright shape around the origin, y pointing down."""
    if shape == "square":
        h = radius * 0.8
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    if shape == "triangle":
        angles = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "star":
        angles = -math.pi / 2 + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * STAR_INNER_RATIO)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    raise ValueError(f"shape {shape!r} is not one of {', '.join(SHAPES)}")


def _outline(shape: str, radius: float) -> np.ndarray:
    """The shape's vertices with their bounding box centred on the origin (circles: the bbox corners)."""
    if shape == "circle":
        return np.array([[-radius, -radius], [radius, radius]])
    points = _polygon(shape, radius)
    return points - (points.min(axis=0) + points.max(axis=0)) / 2


def shape_centre(
    label: ShapeLabel, image_size: int, rng: np.random.Generator | None = None
) -> tuple[float, float]:
    """Where the shape's bounding-box centre goes: its named position, plus a small jitter if `rng`."""
    half = _outline(label.shape, SIZES[label.size] * image_size).max(axis=0)
    jitter = rng.uniform(0, 1, size=2) if rng is not None else np.full(2, 0.5)
    if label.position == "center":
        x, y = image_size / 2 + (jitter - 0.5) * 0.06 * image_size
        return float(x), float(y)
    vertical, horizontal = label.position.split()
    inset = MARGIN * image_size + half + jitter * 0.04 * image_size
    x = inset[0] if horizontal == "left" else image_size - inset[0]
    y = inset[1] if vertical == "top" else image_size - inset[1]
    return float(x), float(y)


def render(label: ShapeLabel, image_size: int = 64, centre: tuple[float, float] | None = None) -> Image.Image:
    """Draw `label` as an RGB image; `centre` defaults to the named position without jitter."""
    for name, value, allowed in (
        ("shape", label.shape, SHAPES), ("colour", label.colour, tuple(COLOURS)),
        ("background", label.background, tuple(COLOURS)), ("size", label.size, tuple(SIZES)),
        ("position", label.position, POSITIONS),
    ):
        if value not in allowed:
            raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")
    if centre is None:
        centre = shape_centre(label, image_size)
    big = image_size * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), COLOURS[label.background])
    draw = ImageDraw.Draw(canvas)
    points = (_outline(label.shape, SIZES[label.size] * image_size) + np.asarray(centre)) * SUPERSAMPLE
    if label.shape == "circle":
        draw.ellipse([tuple(points[0]), tuple(points[1])], fill=COLOURS[label.colour])
    else:
        draw.polygon([tuple(p) for p in points], fill=COLOURS[label.colour])
    return canvas.resize((image_size, image_size), Image.Resampling.BOX)


def random_label(rng: np.random.Generator) -> ShapeLabel:
    colour_names = list(COLOURS)
    colour = colour_names[rng.integers(len(colour_names))]
    backgrounds = [c for c in colour_names if c != colour]
    return ShapeLabel(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=colour,
        background=backgrounds[rng.integers(len(backgrounds))],
        size=tuple(SIZES)[rng.integers(len(SIZES))],
        position=POSITIONS[rng.integers(len(POSITIONS))],
    )


def make_sample(seed: int, index: int, image_size: int = 64) -> ShapeSample:
    """Sample `index` of the dataset with `seed`: a function of (seed, index, image_size) only."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = np.random.default_rng([seed, index])
    label = random_label(rng)
    image = render(label, image_size, shape_centre(label, image_size, rng))
    return ShapeSample(image=image, caption=caption_for(label, rng), label=label)


def samples(seed: int, count: int, image_size: int = 64, start: int = 0) -> Iterator[ShapeSample]:
    for index in range(start, start + count):
        yield make_sample(seed, index, image_size)
