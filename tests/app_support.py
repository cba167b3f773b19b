"""Shared by the tests/test_app_*.py modules: a tiny model folder of our own classes, a window factory,
and a scripted stand-in for Pipeline.generate (for failures a tiny model cannot produce: out of
memory, exact step timing)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import mlx_sd  # noqa: F401  (binds OpenBLAS before mlx.core)

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from PIL import Image

from mlx_sd.config import CLIPTextConfig, ModelConfig, UNetConfig, VAEConfig
from mlx_sd.infotext import format_infotext
from mlx_sd.model_format import TOKENIZER_FOR, write_model
from mlx_sd.pipeline import build_models
from mlx_sd.request import GenerationRequest, GenerationResult, Progress
from mlx_sd.samplers import Cancelled
from mlx_sd.tokenizer import BUNDLED_FOLDER

# Qt warnings fail the app tests; the offscreen platform's one harmless warning is ignored.
QT_MARKS = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore(r"This plugin does not support propagateSizeHints\(\)"),
]

# A tiny SD1: widths and depths shrink, the family's rules stay (8 heads per level, GroupNorm 32,
# 4 VAE levels, CLIP vocabulary and 77 positions). Native size 64 keeps generation fast.
TINY_SD1 = ModelConfig(
    "sd1",
    UNetConfig(sample_size=8, block_out_channels=(32, 64, 64, 64), cross_attention_dim=128),
    VAEConfig(block_out_channels=(32, 32, 64, 64)),
    text_encoder=CLIPTextConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2),
    default_size=64,
    dtype="float32",
)


def write_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A model folder written with model_format.write_model from randomly initialised models."""
    mx.random.seed(seed)
    components = {}
    for name, model in build_models(TINY_SD1).items():
        weights = dict(tree_flatten(model.parameters()))
        mx.eval(weights)
        components[name] = weights
    tokenizers = {TOKENIZER_FOR[name]: BUNDLED_FOLDER for name in TINY_SD1.text_encoders}
    return write_model(folder, TINY_SD1, components, tokenizers)


class ScriptedPipeline:
    """Follows Pipeline.generate's contract (progress per step with a preview, `cancel` polled before
    every step, Cancelled raised with nothing partial) with pictures made from the seed."""

    def __init__(self, step_seconds: float = 0.0, fail: BaseException | None = None, fail_at_step: int = 1):
        """`fail` is raised once, at step `fail_at_step` of the first run."""
        self.step_seconds = step_seconds
        self.fail = fail
        self.fail_at_step = fail_at_step
        self.requests: list[GenerationRequest] = []

    def generate(
        self,
        request: GenerationRequest,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        self.requests.append(request)
        seed = request.seed if request.seed >= 0 else 1234
        seeds = [seed + k for k in range(request.total_images)]
        for batch in range(request.batch_count):
            for step in range(1, request.steps + 1):
                if cancel is not None and cancel():
                    raise Cancelled(f"cancelled before step {step}")
                if self.fail is not None and step == self.fail_at_step:
                    failure, self.fail = self.fail, None
                    raise failure
                time.sleep(self.step_seconds)
                if on_progress is not None:
                    preview = Image.new("RGB", (request.width // 8, request.height // 8), (step * 20 % 256, 90, 160))
                    on_progress(Progress(step, request.steps, batch, request.batch_count, preview))
        images = [noise_image(s, request.width, request.height) for s in seeds]
        infotexts = [format_infotext(request, s) for s in seeds]
        return GenerationResult(images, seeds, infotexts)


def noise_image(seed: int, width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def scripted_loader(pipeline: ScriptedPipeline) -> Callable[[Path, str], ScriptedPipeline]:
    def load(folder: Path, device: str) -> ScriptedPipeline:
        if not (folder / "model.json").is_file():
            raise FileNotFoundError(folder / "model.json")
        return pipeline

    return load


def fake_model_folder(folder: Path, native: int = 512) -> Path:
    """A model folder the library lists (model.json only): for windows driven by ScriptedPipeline."""
    import dataclasses
    import json

    config = dataclasses.replace(TINY_SD1, default_size=native)
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps(config.to_dict()), encoding="utf-8")
    return folder
