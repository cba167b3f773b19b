"""4x upscale of a 512x512 image: our RRDBNet (mlx_sd.upscalers) against spandrel's on torch, in one
run, with time and peak memory of each side and their ratios.

    python -m benchmarks.upscale [--size 512] [--tile 256] [--blocks 23]

Both sides get the same random RealESRGAN_x4plus-shaped weights (written once as a .pth and read
back through convert/upscaler_file.py and spandrel's loader) and the same image. Each side runs in
its own process so that its peak RSS is its own. Needs `pip install --no-deps spandrel einops`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np


def import_spandrel() -> types.ModuleType:
    """spandrel, importable without torchvision: it imports three names from
    torchvision.transforms.functional for LaMa and RestoreFormer only, which we never load, so a stand-in
    module with those names (which fail if ever called) is enough. torchvision itself has no CPU build for
    torch 2.13 on the registries here, and its CUDA build would replace the pinned CPU torch."""
    if "torchvision" not in sys.modules:
        def unavailable(*args: object, **kwargs: object) -> None:
            raise RuntimeError("torchvision is not installed (a stand-in for spandrel's import)")

        functional = types.ModuleType("torchvision.transforms.functional")
        functional.InterpolationMode = type("InterpolationMode", (), {})
        functional.rotate = functional.normalize = unavailable
        transforms = types.ModuleType("torchvision.transforms")
        transforms.functional = functional
        torchvision = types.ModuleType("torchvision")
        torchvision.transforms = transforms
        sys.modules.update({
            "torchvision": torchvision, "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
        })
    import spandrel

    return spandrel
