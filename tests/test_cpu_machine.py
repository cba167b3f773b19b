"""Threads and cache sizes come from the machine the process runs on, not from one VM."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_sd.cpu.machine import THREADS_ENV, CacheSizes, ThreadsError, cache_sizes, thread_count

PROBE = """
import json
import mlx_sd
from mlx_sd.cpu.options import CpuOptions
from mlx_sd.device import worker_streams
print(json.dumps([CpuOptions.for_this_machine().threads, len(worker_streams("cpu"))]))
"""


@pytest.mark.skipif(shutil.which("taskset") is None, reason="util-linux's taskset")
def test_threads_follow_the_affinity_mask():
    done = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [1, 1]


def test_the_environment_overrides_the_thread_count(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    assert thread_count() == 3
    for bad in ("0", "two", "-1", "1.5"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(ThreadsError, match=f"{THREADS_ENV} must be a whole number"):
            thread_count()
    monkeypatch.delenv(THREADS_ENV)
    assert thread_count() >= 1


def write_cache(root: Path, index: int, level: int, kind: str, size: str) -> None:
    folder = root / f"index{index}"
    folder.mkdir()
    (folder / "level").write_text(f"{level}\n")
    (folder / "type").write_text(f"{kind}\n")
    (folder / "size").write_text(f"{size}\n")


def test_cache_sizes_are_read_from_sysfs(tmp_path):
    write_cache(tmp_path, 0, 1, "Data", "48K")
    write_cache(tmp_path, 1, 1, "Instruction", "32K")
    write_cache(tmp_path, 2, 2, "Unified", "2048K")
    write_cache(tmp_path, 3, 3, "Unified", "96M")
    assert cache_sizes(tmp_path) == CacheSizes(l1=48 << 10, l2=2 << 20, l3=96 << 20)
    assert cache_sizes(tmp_path / "missing") == CacheSizes()  # no sysfs: a current x86 core's defaults
