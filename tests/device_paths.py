"""The ways a model can run here: plain (as on Metal), and with the CPU's formulations swapped in,
with mlx-sd's compiled kernels and without them (mlx ops only)."""

from __future__ import annotations

import mlx.nn as nn

from mlx_sd.cpu.accelerate import accelerate
from mlx_sd.cpu.machine import thread_count
from mlx_sd.cpu.options import CpuOptions

PATHS = ("plain", "cpu kernels", "cpu mlx ops")


def options_for(path: str) -> CpuOptions | None:
    if path == "plain":
        return None
    return CpuOptions(kernels=path == "cpu kernels", threads=max(2, thread_count()))


def on_path(model: nn.Module, path: str) -> nn.Module:
    """`model` as `path` runs it (the plain model itself, or an accelerated copy sharing its weights)."""
    options = options_for(path)
    return model if options is None else accelerate(model, options)
