"""A pixel-statistics classifier for shapes-dataset pictures, real or generated.

Background colour: the median of the border ring. Foreground colour: the median of the pixels that
differ most from the background. Both are matched in RGB to the dataset palette.

Shape: each pixel's foreground occupancy (0 = background colour, 1 = foreground colour, blends in
between) is integrated along 64 rays from the shape's centroid, giving its radius r(angle). Blur and
noise barely move these integrals. The 3-, 4- and 5-fold Fourier magnitudes of r (relative to its mean)
are the moments that tell the shapes apart: a triangle has a strong 3-fold term (~0.13), a square a
4-fold one (~0.07), a star a 5-fold one (~0.16) and a circle none. Size and position: the nearest
reference (a clean rendering of the found shape at each named size and position) by mean radius and
centroid.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from .shapes import COLOURS, POSITIONS, SIZES, ShapeLabel, render

UNKNOWN = "unknown"
BORDER = 2  # pixels of the border ring that estimate the background
MIN_CONTRAST = 40.0  # RGB distance from the background below which a pixel is background
MIN_AREA_FRACTION = 0.004  # a foreground region smaller than this (16 px at 64x64) is noise
ANGLES = 64
RAY_STEP = 0.25  # pixels between samples along a ray
# Fourier magnitude of each polygon's own symmetry in a clean rendering (see module docstring).
IDEAL_HARMONICS = {"triangle": (3, 0.13), "square": (4, 0.068), "star": (5, 0.16)}
CIRCLE_BELOW = 0.025  # no symmetry term reaches this: a circle

_PALETTE_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _PALETTE_NAMES], dtype=np.float64)


@dataclass(frozen=True)
class ShapeFeatures:
    harmonics: dict[int, float]  # fold -> |FFT(r)[fold]| / sum(r), for folds 3, 4, 5
    mean_radius: float  # pixels
    centroid: tuple[float, float]  # (x, y) pixels, occupancy-weighted


def _as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] != array.shape[1]:
        raise ValueError(f"expected a square RGB image of shape (N, N, 3), got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {array.dtype}")
    return array.astype(np.float64)


def nearest_colour(rgb: np.ndarray, exclude: str | None = None) -> str:
    distances = np.linalg.norm(_PALETTE - rgb, axis=1)
    if exclude is not None:
        distances[_PALETTE_NAMES.index(exclude)] = np.inf
    return _PALETTE_NAMES[int(np.argmin(distances))]


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _grow(seed: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Every pixel of `allowed` 4-connected to `seed` (flood fill by repeated dilation)."""
    grown = seed & allowed
    while True:
        step = _dilate(grown) & allowed
        if np.array_equal(step, grown):
            return grown
        grown = step


def _largest_component(mask: np.ndarray) -> np.ndarray:
    remaining = mask.copy()
    best = np.zeros_like(mask)
    while remaining.sum() > best.sum():
        seed = np.zeros_like(mask)
        seed[tuple(np.argwhere(remaining)[0])] = True
        component = _grow(seed, remaining)
        if component.sum() > best.sum():
            best = component
        remaining &= ~component
    return best


def foreground_occupancy(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(background RGB, foreground RGB, occupancy in [0, 1] of the main foreground region)."""
    ring = np.ones(rgb.shape[:2], dtype=bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    background = np.median(rgb[ring], axis=0)
    contrast = np.linalg.norm(rgb - background, axis=2)
    peak = float(contrast.max())
    if peak < MIN_CONTRAST:
        return background, background, np.zeros(rgb.shape[:2])
    # The shape's core: pixels nearly as far from the background as the farthest one, leaving out
    # edge pixels blended with the background.
    foreground = np.median(rgb[contrast >= 0.7 * peak], axis=0)
    axis = foreground - background
    occupancy = np.clip((rgb - background) @ axis / (axis @ axis), 0.0, 1.0)
    region = _largest_component((occupancy > 0.5) & (contrast >= MIN_CONTRAST / 2))
    if region.sum() < MIN_AREA_FRACTION * region.size:
        return background, foreground, np.zeros(rgb.shape[:2])
    # Keep the blended rim around the region, drop specks elsewhere.
    return background, foreground, occupancy * _dilate(_dilate(region))


def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of `image` at continuous (x, y), pixel centres at +0.5; zero outside."""
    size = image.shape[0]
    padded = np.pad(image, 1)
    gx, gy = np.clip(x - 0.5, -1, size) + 1, np.clip(y - 0.5, -1, size) + 1
    x0, y0 = np.floor(gx).astype(int), np.floor(gy).astype(int)
    x0, y0 = np.clip(x0, 0, size), np.clip(y0, 0, size)
    fx, fy = gx - x0, gy - y0
    return (
        padded[y0, x0] * (1 - fx) * (1 - fy) + padded[y0, x0 + 1] * fx * (1 - fy)
        + padded[y0 + 1, x0] * (1 - fx) * fy + padded[y0 + 1, x0 + 1] * fx * fy
    )


def shape_features(occupancy: np.ndarray) -> ShapeFeatures:
    size = occupancy.shape[0]
    total = occupancy.sum()
    coords = np.arange(size) + 0.5
    cx = float((occupancy.sum(axis=0) * coords).sum() / total)
    cy = float((occupancy.sum(axis=1) * coords).sum() / total)
    angles = np.arange(ANGLES) * 2 * np.pi / ANGLES
    steps = np.arange(0, size, RAY_STEP)
    xs = cx + np.cos(angles)[:, None] * steps
    ys = cy + np.sin(angles)[:, None] * steps
    radius = _sample(occupancy, xs, ys).sum(axis=1) * RAY_STEP
    spectrum = np.abs(np.fft.rfft(radius)) / radius.sum()
    return ShapeFeatures(
        harmonics={fold: float(spectrum[fold]) for fold in (3, 4, 5)},
        mean_radius=float(radius.mean()),
        centroid=(cx, cy),
    )


def shape_from_features(features: ShapeFeatures) -> str:
    """The shape whose symmetry term is strongest relative to its clean value; a circle if none is."""
    if max(features.harmonics.values()) < CIRCLE_BELOW:
        return "circle"
    return max(IDEAL_HARMONICS, key=lambda s: features.harmonics[IDEAL_HARMONICS[s][0]] / IDEAL_HARMONICS[s][1])


@lru_cache(maxsize=4)
def _references(image_size: int) -> dict[tuple[str, str, str], ShapeFeatures]:
    """Features of clean renderings at every shape, size and position (no jitter)."""
    references = {}
    colour, background = "white", "black"
    for shape in ("circle", *IDEAL_HARMONICS):
        for size in SIZES:
            for position in POSITIONS:
                image = render(ShapeLabel(shape, colour, background, size, position), image_size)
                _, _, occupancy = foreground_occupancy(_as_rgb(image))
                references[shape, size, position] = shape_features(occupancy)
    return references


def _size_and_position(shape: str, features: ShapeFeatures, image_size: int) -> tuple[str, str]:
    references = _references(image_size)
    size = min(SIZES, key=lambda s: abs(references[shape, s, "center"].mean_radius - features.mean_radius))

    def distance(position: str) -> float:
        return float(np.hypot(*np.subtract(references[shape, size, position].centroid, features.centroid)))

    return size, min(POSITIONS, key=distance)


def classify(image: Image.Image | np.ndarray) -> ShapeLabel:
    """Label a square RGB picture; what cannot be determined (no foreground) is "unknown"."""
    rgb = _as_rgb(image)
    background, foreground, occupancy = foreground_occupancy(rgb)
    background_name = nearest_colour(background)
    if not occupancy.any():
        return ShapeLabel(UNKNOWN, UNKNOWN, background_name, UNKNOWN, UNKNOWN)
    features = shape_features(occupancy)
    shape = shape_from_features(features)
    size, position = _size_and_position(shape, features, rgb.shape[0])
    return ShapeLabel(shape, nearest_colour(foreground, exclude=background_name), background_name, size, position)
