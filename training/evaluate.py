"""Scoring a text-to-image model on the shapes task, whatever runs it.

A model is any `generate(prompt, seed) -> PIL image` (or `img2img(image, prompt, strength, seed)`)
callable: the diffusers pipeline while training, our MLX pipeline in the product's tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .classify import classify
from .shapes import COLOURS, SHAPES, ShapeLabel, render

Generate = Callable[[str, int], Image.Image]
# One sampler of each family: first-order ODE, ancestral (stochastic), multistep, DDIM. Each engine
# (training.mlx_eval, training.torch_eval) maps these names onto its own samplers.
SAMPLER_FAMILIES = ("euler", "euler_a", "dpmpp_2m", "ddim")
Img2Img = Callable[[Image.Image, str, float, int], Image.Image]


@dataclass(frozen=True)
class EvalCase:
    prompt: str
    seed: int
    colour: str
    shape: str
    background: str


@dataclass(frozen=True)
class Scores:
    foreground: float  # fraction of images whose shape colour is the prompt's
    background: float
    shape: float
    count: int
    predictions: tuple[ShapeLabel, ...]

    def __str__(self) -> str:
        return (f"foreground {self.foreground:.1%}  background {self.background:.1%}  "
                f"shape {self.shape:.1%}  ({self.count} images)")


def prompt_for(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def grid_cases(seeds: Sequence[int] = (0, 1), backgrounds_per_pair: int = 2) -> list[EvalCase]:
    """Every colour with every shape, each on `backgrounds_per_pair` backgrounds (rotating through all
    the other colours, so every background appears), each with every seed."""
    colours = list(COLOURS)
    cases = []
    for i, colour in enumerate(colours):
        others = [c for c in colours if c != colour]
        for j, shape in enumerate(SHAPES):
            for k in range(backgrounds_per_pair):
                background = others[(i + j * backgrounds_per_pair + k) % len(others)]
                for seed in seeds:
                    cases.append(EvalCase(prompt_for(colour, shape, background), seed, colour, shape, background))
    return cases


def score_images(cases: Sequence[EvalCase], images: Sequence[Image.Image]) -> Scores:
    if len(cases) != len(images):
        raise ValueError(f"expected one image per case ({len(cases)}), got {len(images)}")
    predictions = tuple(classify(image) for image in images)
    n = len(cases)
    return Scores(
        foreground=sum(p.colour == c.colour for p, c in zip(predictions, cases)) / n,
        background=sum(p.background == c.background for p, c in zip(predictions, cases)) / n,
        shape=sum(p.shape == c.shape for p, c in zip(predictions, cases)) / n,
        count=n,
        predictions=predictions,
    )


def evaluate(generate: Generate, cases: Sequence[EvalCase]) -> tuple[Scores, list[Image.Image]]:
    """Generate every case and score the pictures against the prompts' labels."""
    images = [generate(case.prompt, case.seed) for case in cases]
    return score_images(cases, images), images


def contact_sheet(images: Sequence[Image.Image], columns: int = 16) -> Image.Image:
    width, height = images[0].size
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * width, rows * height), "gray")
    for i, image in enumerate(images):
        sheet.paste(image.convert("RGB"), ((i % columns) * width, (i // columns) * height))
    return sheet


# Dataset pictures to repaint: a shape of each kind other than the prompt's square, in colours and on
# backgrounds other than the prompt's yellow and blue except for the first (which shares the blue).
IMG2IMG_SOURCES = (
    ShapeLabel("circle", "red", "blue", "large", "center"),
    ShapeLabel("star", "green", "white", "large", "center"),
    ShapeLabel("triangle", "purple", "orange", "medium", "center"),
    ShapeLabel("circle", "white", "black", "medium", "center"),
)
IMG2IMG_PROMPT = "a yellow square on a blue background"


@dataclass(frozen=True)
class Img2ImgResult:
    source: ShapeLabel
    strength: float
    mean_abs_change: float  # mean |output - input| over pixels and channels, in 0..255
    prediction: ShapeLabel

    @property
    def kept_composition(self) -> bool:
        """Still the source's shape on the source's background."""
        return (self.prediction.shape, self.prediction.background) == (self.source.shape, self.source.background)

    @property
    def kept_everything(self) -> bool:
        return self.kept_composition and self.prediction.colour == self.source.colour


def img2img_check(
    img2img: Img2Img,
    sources: Sequence[ShapeLabel] = IMG2IMG_SOURCES,
    prompt: str = IMG2IMG_PROMPT,
    strengths: Sequence[float] = (0.2, 0.8),
    seed: int = 0,
    image_size: int = 64,
) -> tuple[list[Image.Image], list[Img2ImgResult]]:
    """Repaint each source picture toward `prompt` at each strength; how far did it move, what is it now?
    Returns the source images and one result per (source, strength), sources outermost."""
    images, results = [], []
    for source in sources:
        image = render(source, image_size)
        images.append(image)
        before = np.asarray(image, dtype=np.float64)
        for strength in strengths:
            output = img2img(image, prompt, strength, seed).convert("RGB")
            change = float(np.abs(np.asarray(output, dtype=np.float64) - before).mean())
            results.append(Img2ImgResult(source, strength, change, classify(output)))
    return images, results
