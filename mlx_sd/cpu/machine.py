"""What the CPU path learns from the machine it runs on: how many cores it may use and its caches.

Nothing here is tuned to one machine: the thread count is the set of cores this process may run on
(`os.sched_getaffinity`: a container's or `taskset`'s limit, not the host's core count), and the
kernels' blocking follows the cache sizes the kernel reports in sysfs.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

THREADS_ENV = "MLX_SD_THREADS"
CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")


class ThreadsError(ValueError):
    """MLX_SD_THREADS is not a whole number of at least 1."""


def thread_count() -> int:
    """Threads for the CPU kernels: MLX_SD_THREADS when set, else the cores this process may run on."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ThreadsError(f"{THREADS_ENV} must be a whole number of threads of at least 1, not {value!r}")
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux: the affinity mask is not exposed
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class CacheSizes:
    """Per-core data caches (L1, L2) and the last-level cache, in bytes."""

    l1: int = 32 << 10
    l2: int = 512 << 10
    l3: int = 16 << 20  # the defaults: what a current x86 core has at least, where sysfs says nothing


def _size_bytes(text: str) -> int:
    text = text.strip().upper()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text)


@functools.cache
def cache_sizes(directory: Path = CACHE_DIR) -> CacheSizes:
    """The caches of the first CPU from sysfs (defaults for any level it does not report)."""
    found: dict[int, int] = {}
    for index in sorted(directory.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = int((index / "level").read_text())
            size = _size_bytes((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified"):
            found[level] = size
    default = CacheSizes()
    last_level = found.get(4, found.get(3, default.l3))
    return CacheSizes(l1=found.get(1, default.l1), l2=found.get(2, default.l2), l3=last_level)
