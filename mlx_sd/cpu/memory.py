"""Where mlx's CPU backend gets its memory from, on Linux: freed buffers stay in glibc's heap.

mlx's CPU allocator takes every buffer from malloc and keeps a freed one for reuse only while its
cache is under the limit, and reuses it only for a request within 8 KB of its size; glibc serves
every request above 32 MB with a fresh mmap and unmaps it on free, so every large activation costs
a page fault per 4 KB page, every time. Told never to mmap and never to trim, glibc keeps freed
buffers in its heap, where neighbours coalesce and any later size fits; mlx's own cache would then
only hold memory twice, so it is off. Every thread shares that one heap (a thread's own arena maps
anything above 64 MB fresh, and the app generates on its own thread); threads that allocated before
the settings keep their arenas, so entry points apply them first (mlx_sd.runtime.setup).

The heap stays at its high-water mark until `release_free_memory()` (malloc_trim) hands its free
pages back to the OS: the pipeline calls it after a load and when it drops its text encoders, the
app between runs (Pipeline.release_cached_memory). Not after every generation in the engine: the
next one would fault its pages in again.

Reading weights (where they cannot be mapped: mlx_sd.mapped_weights) or casting them faults in
every page they land in. `prefault_heap` first grows the heap by what the read and casts will take,
in transparent huge pages faulted in by every core at once, and frees it again: the read then lands
in pages already there. The measurements are in docs/performance.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlx.core as mx

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
NEVER_TRIM = -1  # mallopt takes an int: -1 becomes SIZE_MAX, "never" (2**31 - 1 still trims a 2 GB free top)
# Where glibc's mallopt is missing (another C library), mlx's own cache is what reuses buffers.
FALLBACK_CACHE_BYTES = 512 << 20
# madvise advice (Linux's mman.h); MADV_POPULATE_WRITE needs Linux 5.14
MADV_HUGEPAGE = 14
MADV_POPULATE_WRITE = 23
PAGE_BYTES = 4096
HUGE_PAGE_BYTES = 2 << 20
TRANSPARENT_HUGE_PAGES = Path("/sys/kernel/mm/transparent_hugepage/enabled")

_heap_keeps_freed = False  # set by keep_freed_memory: freed buffers stay in glibc's heap


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc, looked up once (find_library runs ldconfig)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def keep_freed_memory() -> str:
    """Make freed CPU buffers reusable without page faults; returns "heap" or "mlx cache"."""
    global _heap_keeps_freed
    libc = _glibc()
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM))
    _heap_keeps_freed = libc is not None and all(libc.mallopt(parameter, value) == 1 for parameter, value in settings)
    if _heap_keeps_freed:
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


def transparent_huge_pages() -> bool:
    """Whether the kernel backs memory that asks for it (madvise) with 2 MB pages."""
    try:
        return "[never]" not in TRANSPARENT_HUGE_PAGES.read_text()
    except OSError:
        return False


def prefault_heap(nbytes: int) -> bool:
    """Fault in `nbytes` of heap now, in 2 MB pages, for the buffers allocated next (a model's
    weights); returns whether it did.

    Only where freed memory stays in glibc's heap (keep_freed_memory) and the kernel has
    transparent huge pages: in 4 KB pages, faulting ahead costs what the read would have cost.
    """
    libc = _glibc()
    if nbytes <= 0 or libc is None or not _heap_keeps_freed or not transparent_huge_pages():
        return False
    block = libc.malloc(nbytes)
    if not block:
        return False
    try:
        start = -(-block // PAGE_BYTES) * PAGE_BYTES
        end = (block + nbytes) // PAGE_BYTES * PAGE_BYTES
        if end <= start or libc.madvise(start, end - start, MADV_HUGEPAGE) != 0:
            return False
        # one range per core, cut at 2 MB boundaries; ctypes releases the GIL during each call
        cores = max(1, min(os.cpu_count() or 1, 8))
        step = max(HUGE_PAGE_BYTES, (end - start) // cores // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES)
        cuts = list(range(start, end, step)) + [end]
        with ThreadPoolExecutor(len(cuts) - 1) as pool:
            done = pool.map(lambda a, b: libc.madvise(a, b - a, MADV_POPULATE_WRITE), cuts[:-1], cuts[1:])
            return all(result == 0 for result in done)
    finally:
        libc.free(block)  # back into the heap, which keeps it: the next allocations take these pages
