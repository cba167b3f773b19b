"""Bind the system OpenBLAS before `mlx.core` loads, on Linux.

The Linux mlx CPU wheel links a reference BLAS, far slower than OpenBLAS (docs/performance.md); loading Debian's
OpenBLAS (`libopenblas0-pthread`) with RTLD_GLOBAL first makes mlx resolve `cblas_sgemm` to it
instead. The dynamic linker binds those symbols when `mlx.core` loads, so this must run before
anything imports it: `mlx_sd/__init__.py` imports this module first, the package's one import side
effect. Set MLX_SD_NO_OPENBLAS=1 to skip it.

OpenBLAS picks its kernels for the CPU when it loads, unless OPENBLAS_CORETYPE names them: on an
AVX-512 CPU its SkylakeX/Cooperlake kernels run float32 matmuls faster than its AVX2
(Haswell) ones (docs/performance.md). The status reports the kernels in use, and the variable when it was set.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

DISABLE_ENV = "MLX_SD_NO_OPENBLAS"
CORETYPE_ENV = "OPENBLAS_CORETYPE"
_CANDIDATES = (
    "libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
)


@dataclass(frozen=True)
class BlasStatus:
    openblas_path: str | None  # the library bound for mlx, or None
    reason: str  # one line for `mlx-sd info`
    core: str | None = None  # the kernels OpenBLAS runs ("Cooperlake", "Haswell", ...)


def _preload() -> BlasStatus:
    if not sys.platform.startswith("linux"):
        return BlasStatus(None, "not Linux: mlx uses the platform's own BLAS (Accelerate on macOS)")
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return BlasStatus(None, f"disabled by {DISABLE_ENV}: mlx uses the reference BLAS of its wheel")
    if "mlx.core" in sys.modules:
        return BlasStatus(None, "mlx.core was imported before mlx_sd, too late to bind OpenBLAS")
    for candidate in _CANDIDATES:
        try:
            library = ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        core = _core_name(library)
        pinned = f", set by {CORETYPE_ENV}" if os.environ.get(CORETYPE_ENV) else ""
        return BlasStatus(
            _loaded_path("libopenblas") or candidate, f"system OpenBLAS bound before mlx.core; {core} kernels{pinned}", core
        )
    return BlasStatus(
        None,
        "OpenBLAS not found: mlx uses the slow reference BLAS of its wheel "
        "(install Debian's libopenblas0-pthread for about 30x faster float32 matmuls)",
    )


def _core_name(library: ctypes.CDLL) -> str:
    try:
        get_corename = library.openblas_get_corename
    except AttributeError:  # not OpenBLAS's own build
        return "unknown"
    get_corename.restype = ctypes.c_char_p
    return get_corename().decode(errors="replace")


def _loaded_path(fragment: str) -> str | None:
    """Path of a shared library mapped into this process whose name contains `fragment`."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if fragment in os.path.basename(path):
                    return path
    except OSError:
        return None
    return None


def use_one_thread() -> bool:
    """Run OpenBLAS on its calling thread only; False where OpenBLAS is not bound.

    Once mlx-sd's compiled GEMM (mlx_sd.cpu.kernels) does the heavy products, OpenBLAS serves only
    small ones (masked attention, strided convolutions), and after each call its idle worker
    threads spin in sched_yield for a while, taking a core from the kernels' threads
    (docs/performance.md).
    """
    if STATUS.openblas_path is None:
        return False
    library = ctypes.CDLL(STATUS.openblas_path)  # the handle of the copy already loaded
    if not hasattr(library, "openblas_set_num_threads"):
        return False
    library.openblas_set_num_threads(1)
    return True


STATUS = _preload()
