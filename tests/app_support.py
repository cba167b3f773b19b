"""Shared by the tests/test_app_*.py modules: a tiny model folder of our own classes, a window factory
(`open_window`), and a scripted stand-in for Pipeline.generate (for failures a tiny model cannot produce: out of
memory, exact step timing)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from model_folders import CONFIGS, write_random_model
from PIL import Image

from app.generation_worker import Loader
from app.main_window import MainWindow
from app.settings import AppSettings
from mlx_sd.infotext import format_infotext
from mlx_sd.request import GenerationRequest, GenerationResult, Progress
from mlx_sd.samplers import Cancelled

# Qt warnings fail the app tests; the offscreen platform's one harmless warning is ignored.
QT_MARKS = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore(r"This plugin does not support propagateSizeHints\(\)"),
]

# The tiny SD1 at float32 storage; native size 64 keeps generation fast.
TINY_SD1 = dataclasses.replace(CONFIGS["sd1"], dtype="float32")


def write_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A model folder written with model_format.write_model from randomly initialised models."""
    write_random_model(folder, TINY_SD1, seed)
    return folder


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

    def release_cached_memory(self) -> None:
        self.released = getattr(self, "released", 0) + 1  # what the worker asks after every run


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
    config = dataclasses.replace(TINY_SD1, default_size=native)
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps(config.to_dict()), encoding="utf-8")
    return folder


def open_window(
    qtbot,
    library: Path,
    pipeline: ScriptedPipeline | None = None,
    *,
    settings: AppSettings | None = None,
    settings_path: Path | None = None,
    loader: Loader | None = None,
) -> MainWindow:
    """A shown main window on `library` without the demo model, generating with `pipeline` (a fresh
    ScriptedPipeline by default) or through `loader`."""
    window = MainWindow(
        settings or AppSettings(), library, settings_path,
        loader=loader or scripted_loader(pipeline or ScriptedPipeline()), demo_folder=None,
    )
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    return window
