"""Process-wide settings that entry points (CLI, app, server, benchmarks) apply once, explicitly.

Importing mlx_sd changes nothing here: a library must not reconfigure the allocator of the process
that imports it. `setup()` is called first thing, before other threads allocate: glibc gives a
thread that allocated before it its own arena, which the settings do not reach.
"""

from __future__ import annotations

from .cpu import kernels
from .cpu.memory import keep_freed_memory
from .device import gpu_available

_configured: str | None = None


def setup() -> str:
    """Configure how this process keeps freed memory; returns where freed buffers are kept.

    On mlx's CPU-only build freed buffers stay in glibc's heap for reuse (mlx_sd.cpu.memory). Where
    a GPU exists nothing changes: the CPU shares the GPU allocator, whose cache is already as large
    as its memory limit. Calling it again changes nothing.
    """
    global _configured
    if _configured is None:
        _configured = "gpu allocator" if gpu_available() else keep_freed_memory()
    return _configured


def prepare_cpu_kernels() -> kernels.KernelStatus:
    """Build (once per machine and mlx version) or load the CPU kernels now, e.g. while an app starts,
    rather than at the first CPU pipeline load; returns whether they are used and why not."""
    return kernels.status()
