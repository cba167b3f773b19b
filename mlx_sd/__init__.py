"""mlx-sd: Stable Diffusion 1.x / 2.x / SDXL in MLX.

`blas` is imported first: on Linux it binds the system OpenBLAS before mlx.core loads. `device` comes
next: it sets how freed CPU memory is kept (mlx_sd.cpu_memory), which must happen before other threads
allocate (the app's generation thread included).
"""

# blas must precede every mlx import; device configures the CPU allocator
from . import blas, device  # noqa: F401

__version__ = "0.1.0"
