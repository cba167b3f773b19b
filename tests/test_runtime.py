"""`import mlx_sd` configures nothing but the OpenBLAS binding; `mlx_sd.setup()` configures the rest."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Reports, from a fresh interpreter, whether a 64 MB malloc is served by a fresh mmap (glibc's default,
# which setup() turns off), mlx's cache limit, and the environment.
PROBE = """
import ctypes, json, os, sys
environment = dict(os.environ)
{prelude}
import mlx.core as mx

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.mallinfo2.restype = MallInfo2
block = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblkhd
print(json.dumps({{"mapped_fresh": mapped >= 64 << 20, "cache_limit": mx.set_cache_limit(0),
                  "environment_unchanged": environment == dict(os.environ)}}))
"""


def probe(prelude: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(prelude=prelude)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2")
def test_import_leaves_the_allocator_and_mlx_cache_alone_and_setup_configures_them():
    untouched = probe("")
    assert untouched["mapped_fresh"]
    assert probe("import mlx_sd") == untouched
    configured = probe("import mlx_sd; mlx_sd.setup()")
    assert configured == {"mapped_fresh": False, "cache_limit": 0, "environment_unchanged": True}


def test_setup_is_idempotent():
    import mlx_sd

    assert mlx_sd.setup() == mlx_sd.setup()


def test_the_public_api_is_importable_from_the_package():
    from mlx_sd import GenerationRequest, Pipeline, available_precisions
    from mlx_sd.pipeline import Pipeline as pipeline_module_class
    from mlx_sd.request import GenerationRequest as request_module_class

    assert (Pipeline, GenerationRequest) == (pipeline_module_class, request_module_class)
    assert available_precisions()[0] == "float32"
