"""Tiny random model folders for the generate tests (SD1-like, 9-channel inpainting, SDXL-like, refiner-like),
written with model_format.write_model from the tiny configs of tests/model_folders.py, and helpers to watch a
pipeline's model calls. Imported by the other test_generate_* files; the checks here are about the fixtures."""

from __future__ import annotations

import dataclasses
from pathlib import Path


import mlx.core as mx
import numpy as np
import pytest

from mlx_sd.pipeline import Pipeline
from mlx_sd.request import GenerationRequest
from model_folders import CONFIGS as LOAD_CONFIGS, write_random_model

CONFIGS = {
    **LOAD_CONFIGS,
    "sd1-inpaint": dataclasses.replace(
        LOAD_CONFIGS["sd1"], unet=dataclasses.replace(LOAD_CONFIGS["sd1"].unet, in_channels=9)
    ),
}
SIZE = 64  # pixels; latents are 8 x 8


def request(**changes) -> GenerationRequest:
    """A small, fast request: 64 x 64, 3 steps, a fixed seed."""
    base = GenerationRequest(prompt="a red circle on a blue background", width=SIZE, height=SIZE, steps=3, seed=7)
    return dataclasses.replace(base, **changes)


class CountingUNet:
    """Wraps a UNet and records the batch size of every call."""

    def __init__(self, unet):
        self.unet = unet
        self.batches: list[int] = []

    def __call__(self, sample, timestep, context, **extra):
        self.batches.append(sample.shape[0])
        return self.unet(sample, timestep, context, **extra)

    def __getattr__(self, name: str):  # config, parameters(): what the pipeline reads of its UNet
        return getattr(self.unet, name)


# Each test module that imports the fixtures below gets its own copy of them, so the folders and
# pipelines are cached here to be built once per test session.
_FOLDERS: dict[str, Path] = {}
_PIPES: dict[str, Pipeline] = {}


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not _FOLDERS:
        root = tmp_path_factory.mktemp("generate_models")
        for family, config in CONFIGS.items():
            write_random_model(root / family, config)
            _FOLDERS[family] = root / family
    return _FOLDERS


@pytest.fixture(scope="session")
def pipes(model_folders: dict[str, Path]) -> dict[str, Pipeline]:
    """One loaded pipeline per kind, shared by tests that do not change it."""
    if not _PIPES:
        _PIPES.update({family: Pipeline.load(folder) for family, folder in model_folders.items()})
    return _PIPES


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def levels_apart(a, b) -> int:
    """The largest difference between two 8-bit images, in levels."""
    return int(np.abs(np.asarray(a, dtype=np.int32) - np.asarray(b, dtype=np.int32)).max())


def test_fixture_models_are_the_four_kinds(pipes: dict[str, Pipeline]) -> None:
    assert pipes["sd1-inpaint"].config.is_inpainting and not pipes["sd1"].config.is_inpainting
    assert pipes["sdxl"].config.unet.addition_embed_type == "text_time"
    assert pipes["sdxl-refiner"].config.requires_aesthetics_score and pipes["sdxl-refiner"].text_encoder is None
    assert pipes["sd1-inpaint"].unet.conv_in.weight.shape[-1] == 9
    assert all(p.dtype == mx.float32 for p in pipes.values())  # the CPU computes in float32
