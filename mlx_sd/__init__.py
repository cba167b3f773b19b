"""mlx-sd: Stable Diffusion 1.x / 2.x / SDXL in MLX.

`blas` is imported first: on Linux it binds the system OpenBLAS before mlx.core loads.
"""

from . import blas  # noqa: F401  (must precede every mlx import)

__version__ = "0.1.0"
