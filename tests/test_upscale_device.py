"""Upscaler networks prepared for the CPU (mlx_sd.upscalers.device) compute what the plain ones do."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_sd.cpu.modules import CpuConv2d
from mlx_sd.upscalers import CompactConfig, RRDBNetConfig, build_upscaler
from mlx_sd.upscalers.device import for_device
from mlx_sd.upscalers.rrdbnet import RRDB


def _modules(model: nn.Module) -> list[nn.Module]:
    return [module for _, module in model.named_modules()]


@pytest.mark.parametrize("config", [
    RRDBNetConfig(features=16, growth=8, blocks=2),
    RRDBNetConfig(features=16, growth=8, blocks=1, unshuffle=2),
    CompactConfig(features=16, convs=2, scale=4),
], ids=["x4", "x2plus", "compact"])
def test_the_cpu_network_matches_the_plain_one(config):
    mx.random.seed(3)
    plain = build_upscaler(config)
    image = mx.array(np.random.default_rng(3).random((1, 20, 24, 3), dtype=np.float32))
    with mx.stream(mx.cpu):
        expected = plain(image)
        prepared = for_device(plain)
        got = prepared(image)
    convolutions = [m for m in _modules(prepared) if isinstance(m, nn.Conv2d)]
    assert convolutions and all(isinstance(m, CpuConv2d) for m in convolutions)
    assert not any(isinstance(m, CpuConv2d) for m in _modules(plain))  # the plain network is left as it was
    blocks = [m for m in _modules(prepared) if isinstance(m, RRDB)]
    assert all(hasattr(m, "boundary") for m in blocks)
    assert len(blocks) == getattr(config, "blocks", 0)
    assert dict(tree_flatten(prepared.parameters())).keys() == dict(tree_flatten(plain.parameters())).keys()
    np.testing.assert_allclose(np.array(got), np.array(expected), atol=1e-5, rtol=1e-5)


def test_preparing_a_prepared_network_changes_nothing():
    prepared = for_device(build_upscaler(RRDBNetConfig(features=8, growth=4, blocks=1)))
    assert for_device(prepared) is prepared
