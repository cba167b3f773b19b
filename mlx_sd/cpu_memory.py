"""Where mlx's CPU backend gets its memory from, on Linux: freed buffers stay in glibc's heap.

mlx's CPU allocator takes every buffer from malloc and keeps a freed one for reuse only while its
cache is under the limit, and reuses it only for a request within 8 KB of its size; glibc serves
every request above 32 MB with a fresh mmap and unmaps it on free. So a 512x512 SD VAE decode
mapped 9.5 GB of fresh pages, about 2.6 million page faults at 1.8 us each on the test machine:
4-5 s of a 16 s decode, whatever mlx's cache limit below 2 GB. Told never to mmap and never to
trim, glibc keeps freed buffers in its heap, where neighbours coalesce and any later size fits:
after the first decode no page faults, 16-19 s -> 12 s, and a lower peak RSS than a 512 MB mlx
cache (2.07 against 2.11 GB). mlx's own cache then only holds memory twice, so it is off. Every
thread shares that one heap: a thread's own arena is at most 64 MB and maps anything larger fresh,
and the app generates on its own thread. Threads that allocated before this runs keep their arenas,
so `import mlx_sd` configures it first thing.

The heap stays at its high-water mark until `release_free_memory()` (malloc_trim) hands its free
pages back to the OS: the pipeline calls it after a load and when it drops its text encoders, the
app when a run ends (an idle app holds its weights, not its last activations). Not after every
generation in the engine: the next one would fault its pages in again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

import mlx.core as mx

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
NEVER_TRIM = -1  # mallopt takes an int: -1 becomes SIZE_MAX, "never" (2**31 - 1 still trims a 2 GB free top)
# Where glibc's mallopt is missing (another C library), mlx's own cache is what reuses buffers.
FALLBACK_CACHE_BYTES = 512 << 20


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc, looked up once (find_library runs ldconfig)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_freed_memory() -> str:
    """Make freed CPU buffers reusable without page faults; returns "heap" or "mlx cache"."""
    libc = _glibc()
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM))
    if libc is not None and all(libc.mallopt(parameter, value) == 1 for parameter, value in settings):
        mx.set_cache_limit(0)
        return "heap"
    mx.set_cache_limit(FALLBACK_CACHE_BYTES)
    return "mlx cache"


def release_free_memory() -> None:
    """Give the free pages of glibc's heap back to the OS (they fault in again when next used)."""
    mx.clear_cache()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
