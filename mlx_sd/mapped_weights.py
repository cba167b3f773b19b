"""A weight file mapped into memory instead of read: its arrays are the page cache's own pages.

mx.load reads every tensor into fresh memory, and on the CPU each fresh page costs a fault and the
kernel's zeroing before the copy: most of a load's time (issue 6: SD1.5 1-6 s, SDXL 8-17 s on the
test VM, whose host takes freed memory back and faults it in again). Mapped, SD1.5's UNet file
(1.6 GB) is ready in 0.65 s and SDXL's (4.9 GB) in 1.6 s, and its pages are shared with the page
cache rather than copied. The mapping is private and copy-on-write: no array can write to the file.

Only with mlx's CPU-only build (a GPU backend's allocator owns every array) and the compiled CPU kernels, which
make these arrays (csrc/mapped_weights.cpp); it checks, once, that the arrays it makes read back
what mlx itself saved. Elsewhere `load` returns None and the caller reads the file with mx.load.

A mapped page that its file no longer has is a SIGBUS, and a file rewritten in place changes the
arrays under the model. So only files that cannot change under us are mapped: read-only ones (the
converter writes the library's model files so; any other folder is the user's to edit) on a local,
fixed disk (a network share or a removable stick can lose or change a file without this process
knowing). The pipeline checks the files again before each generation (model_format.LoadedFiles).
"""

from __future__ import annotations

import functools
import os
import stat
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np

from .cpu import kernels as cpu_kernels
from .device import current_device, gpu_available
from .dtypes import SAFETENSORS_DTYPES
from .safetensors_header import SafetensorsHeader, read_header

# What csrc/module.cpp's mapped_array makes; a file with other dtypes is read instead.
MAPPED_DTYPES = frozenset({"F32", "F16", "BF16", "U32", "I32", "U8"})
# Kernel file-system types whose files can change or vanish behind a mapping: network and
# cluster file systems, FUSE, the host's shares in a VM, and the removable disks' formats.
UNSAFE_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "9p", "virtiofs", "ceph", "glusterfs", "afs", "lustre",
    "gfs2", "ocfs2", "davfs", "fuse", "fuseblk", "vfat", "msdos", "exfat", "ntfs", "ntfs3", "hfsplus", "udf",
    "iso9660",
})  # fmt: skip

@functools.cache
def _supported() -> bool:
    """Whether mapped arrays work with this mlx: a small file saved by mlx reads back equal."""
    if gpu_available() or current_device() != "cpu" or not cpu_kernels.available():
        return False  # a GPU backend's allocator owns CPU arrays too, with buffers of its own kind
    expected = {"a": mx.arange(7, dtype=mx.float16), "b": mx.array([[1.5, -2.0], [3.25, 4.0]])}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "check.safetensors"
        mx.save_safetensors(str(path), expected)
        try:
            got = _map(path, read_header(path))
        except (RuntimeError, ValueError, OSError):
            return False
        return all(np.array_equal(np.array(got[k]), np.array(v)) and got[k].dtype == v.dtype for k, v in expected.items())


def filesystem_type(path: Path) -> str | None:
    """The kernel's name for the file system holding `path` (Linux's /proc/self/mountinfo), or None."""
    try:
        device = path.stat().st_dev
        lines = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in lines:
        # id parent major:minor root mount-point options [optional fields...] - type source super-options
        fields, _, tail = line.partition(" - ")
        if fields.split(" ")[2:3] == [wanted] and tail:
            return tail.split(" ")[0]
    return None


def mapping_is_safe(path: Path) -> bool:
    """Whether the file at `path` cannot change behind a mapping: read-only, on a local fixed disk."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    if not stat.S_ISREG(mode) or mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return False
    kind = filesystem_type(path)
    return kind is not None and kind.split(".")[0] not in UNSAFE_FILESYSTEMS  # fuse.sshfs is FUSE


def _map(path: Path, header: SafetensorsHeader) -> dict[str, mx.array]:
    module = cpu_kernels.status().module
    mapping = module.map_file(str(path))
    return {
        name: module.mapped_array(mapping, header.data_start + entry.begin, list(entry.shape), SAFETENSORS_DTYPES[entry.dtype][0])
        for name, entry in header.tensors.items()
    }


def load(path: Path, header: SafetensorsHeader) -> dict[str, mx.array] | None:
    """The tensors of the file at `path` (whose validated header is `header`) as arrays on its
    mapped pages, or None where mapping is not available or not safe (then read it with mx.load)."""
    if not _supported() or not mapping_is_safe(path) or not {e.dtype for e in header.tensors.values()} <= MAPPED_DTYPES:
        return None
    return _map(path, header)
