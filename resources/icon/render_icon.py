"""Render the mlx-sd app icon as PNGs: `python resources/icon/render_icon.py [--out DIR]`.

A sunset over hills that emerges from coarse colour noise, clean at the bottom right and noisy at the
top left: a picture being denoised, which is what Stable Diffusion does. Drawn with numpy and Pillow at
twice the largest size and scaled down, on a rounded square with the margins of the macOS icon grid
(an 824-pixel body on a 1024 canvas). Deterministic: the same PNGs every run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZES = (16, 32, 64, 128, 256, 512, 1024)
NAME = "mlx-sd"
CANVAS = 2048  # drawn at twice 1024, then scaled down
BODY_INSET = 100 / 1024  # macOS grid: 824 px body on a 1024 canvas
CORNER = 185 / 1024
HORIZON = 0.64
NOISE_BLOCKS = 16  # the noise is coarse blocks, like a latent seen at full size


def sky(height: int, width: int) -> np.ndarray:
    """Night blue at the top to rose at the horizon, dusk purple below it."""
    top, horizon, bottom = np.array([22, 30, 84.0]), np.array([238, 118, 118.0]), np.array([90, 44, 110.0])
    t = np.linspace(0.0, 1.0, height)[:, None]
    upper = top + (horizon - top) * np.clip(t / HORIZON, 0, 1) ** 1.4
    lower = horizon + (bottom - horizon) * np.clip((t - HORIZON) / (1 - HORIZON), 0, 1)
    column = np.where(t <= HORIZON, upper, lower)
    return np.repeat(column[:, None, :], width, axis=1)


def scene(size: int) -> np.ndarray:
    """The clean picture: sky, a sun half set behind two ranges of hills."""
    image = Image.fromarray(sky(size, size).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    cx, cy, r = 0.6 * size, 0.56 * size, 0.2 * size
    for i in range(64):  # the sun: yellow core to orange rim, drawn as shrinking discs
        f = i / 63
        radius = r * (1 - f)
        colour = (255, int(138 + 84 * f), int(72 + 40 * f))
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    far = [(0, 0.66), (0.16, 0.55), (0.3, 0.61), (0.46, 0.5), (0.62, 0.63), (0.8, 0.53), (1, 0.6), (1, 1), (0, 1)]
    near = [(0, 0.78), (0.22, 0.68), (0.42, 0.76), (0.66, 0.66), (0.86, 0.74), (1, 0.7), (1, 1), (0, 1)]
    draw.polygon([(x * size, y * size) for x, y in far], fill=(70, 40, 104))
    draw.polygon([(x * size, y * size) for x, y in near], fill=(36, 22, 64))
    return np.asarray(image, dtype=np.float64)


def noised(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blend in block noise: strong at the top left, none at the bottom right."""
    size = clean.shape[0]
    block = size // NOISE_BLOCKS
    means = clean.reshape(NOISE_BLOCKS, block, NOISE_BLOCKS, block, 3).mean(axis=(1, 3))
    noise = np.clip(means + rng.normal(0, 95, means.shape), 0, 255)
    noise = np.repeat(np.repeat(noise, block, axis=0), block, axis=1)
    y, x = np.mgrid[0:size, 0:size] / size
    amount = np.clip((1.25 - (x + y)) / 0.75, 0, 1)[..., None] ** 1.5  # 1 at the corner, 0 past the diagonal
    return clean * (1 - amount) + noise * amount


def body_mask(size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    inset, radius = BODY_INSET * size, CORNER * size
    ImageDraw.Draw(mask).rounded_rectangle((inset, inset, size - inset, size - inset), radius=radius, fill=255)
    return mask


def render(seed: int = 0) -> Image.Image:
    """The icon at 1024 x 1024, RGBA."""
    body = int(round(CANVAS * (1 - 2 * BODY_INSET)))
    body -= body % NOISE_BLOCKS
    picture = noised(scene(body), np.random.default_rng(seed))
    canvas = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    offset = (CANVAS - body) // 2
    canvas.paste(Image.fromarray(picture.round().astype(np.uint8)).convert("RGBA"), (offset, offset))
    canvas.putalpha(body_mask(CANVAS))
    return canvas.resize((1024, 1024), Image.Resampling.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    icon = render()
    args.out.mkdir(parents=True, exist_ok=True)
    for size in SIZES:
        image = icon if size == 1024 else icon.resize((size, size), Image.Resampling.LANCZOS)
        image.save(args.out / f"{NAME}-{size}.png", optimize=True)
        print(args.out / f"{NAME}-{size}.png")


if __name__ == "__main__":
    main()
