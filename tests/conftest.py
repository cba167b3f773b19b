"""Test-wide setup: Qt runs offscreen, and mlx_sd is imported and set up before anything loads mlx.core
(so the OpenBLAS binding of mlx_sd.cpu.blas and the runtime settings apply to the whole session)."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mlx_sd  # noqa: E402

mlx_sd.setup()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random models of every kind (tests/tiny_models.py: KINDS), each written once per session on
    first use: tiny_models.diffusers(kind), .configs_only(kind), .single_file(kind, ema=False) -> Path."""
    from tiny_models import TinyModelCache  # torch and diffusers load only for the tests that use this

    return TinyModelCache(tmp_path_factory.mktemp("tiny_models"))
