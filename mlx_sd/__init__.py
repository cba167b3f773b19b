"""mlx-sd: Stable Diffusion 1.x / 2.x / SDXL in MLX.

Importing the package configures nothing but one thing that cannot wait: on Linux the system
OpenBLAS is bound before `mlx.core` loads (mlx_sd.cpu.blas), since mlx resolves its BLAS symbols
when it is loaded. Entry points (CLI, app, server, benchmarks) call `setup()` for the rest.
"""

# The one import side effect, and the first import: see mlx_sd/cpu/blas.py for why it must precede mlx.core.
from .cpu import blas as _blas  # noqa: F401  isort: skip

__version__ = "0.1.0"  # before the imports below: mlx_sd.infotext records it

from .device import available_precisions  # noqa: E402
from .pipeline import Pipeline  # noqa: E402
from .request import GenerationRequest  # noqa: E402
from .runtime import setup  # noqa: E402

__all__ = ["GenerationRequest", "Pipeline", "available_precisions", "setup"]
