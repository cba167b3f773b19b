"""The OpenBLAS binding of mlx_sd.cpu.blas: bound by default, skipped with MLX_SD_NO_OPENBLAS=1, same results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlx_sd.cpu.blas import _CANDIDATES, CORETYPE_ENV, DISABLE_ENV

# Runs in a fresh interpreter so that the binding happens (or not) before mlx.core loads.
SCRIPT = r"""
import json, sys, time
import mlx_sd
import mlx.core as mx
import mlx.nn as nn
import numpy as np

key = mx.random.key(0)
a, b = mx.random.normal((1024, 1024), key=key), mx.random.normal((1024, 1024), key=mx.random.key(1))
mx.eval(a, b, a @ b)  # warm-up
runs = 3
start = time.perf_counter()
for _ in range(runs):
    product = a @ b
    mx.eval(product)
seconds = (time.perf_counter() - start) / runs

conv = nn.Conv2d(16, 32, 3, padding=1)
conv.update({"weight": mx.random.normal(conv.weight.shape, key=mx.random.key(2)) * 0.1,
             "bias": mx.random.normal(conv.bias.shape, key=mx.random.key(3))})
image = mx.random.normal((2, 24, 24, 16), key=mx.random.key(4))
np.savez(sys.argv[1], matmul=np.array(product), conv=np.array(conv(image)))
print(json.dumps({
    "openblas_path": mlx_sd.cpu.blas.STATUS.openblas_path,
    "reason": mlx_sd.cpu.blas.STATUS.reason,
    "core": mlx_sd.cpu.blas.STATUS.core,
    "gflops": 2 * 1024**3 / seconds / 1e9,
}))
"""


def run(tmp_path: Path, name: str, disable: bool, coretype: str | None = None) -> tuple[dict, np.lib.npyio.NpzFile]:
    env = {k: v for k, v in os.environ.items() if k not in (DISABLE_ENV, CORETYPE_ENV)}
    if disable:
        env[DISABLE_ENV] = "1"
    if coretype:
        env[CORETYPE_ENV] = coretype
    out = tmp_path / f"{name}.npz"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), np.load(out)


def openblas_installed() -> bool:
    return any(Path(c).exists() for c in _CANDIDATES if c.startswith("/"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the binding only exists on Linux")
def test_openblas_binding_and_same_results(tmp_path: Path) -> None:
    bound, bound_out = run(tmp_path, "bound", disable=False)
    plain, plain_out = run(tmp_path, "plain", disable=True)
    print(
        f"\nfloat32 1024x1024 matmul: {bound['gflops']:.1f} GFLOPS with {bound['openblas_path']}, "
        f"{plain['gflops']:.1f} GFLOPS with {DISABLE_ENV}=1"
    )
    if openblas_installed():
        assert bound["openblas_path"] and "openblas" in bound["openblas_path"], bound["reason"]
    else:
        assert bound["openblas_path"] is None
    assert plain["openblas_path"] is None
    assert DISABLE_ENV in plain["reason"]
    for name in ("matmul", "conv"):
        np.testing.assert_allclose(bound_out[name], plain_out[name], rtol=1e-5, atol=1e-4, err_msg=name)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not openblas_installed(), reason="needs Debian's OpenBLAS")
def test_status_names_the_openblas_kernels_and_a_pinned_choice(tmp_path: Path) -> None:
    chosen, chosen_out = run(tmp_path, "chosen", disable=False)
    pinned, pinned_out = run(tmp_path, "pinned", disable=False, coretype="Haswell")
    print(f"\n{chosen['core']}: {chosen['gflops']:.1f} GFLOPS; Haswell: {pinned['gflops']:.1f} GFLOPS")
    assert pinned["core"] == "Haswell" and f"Haswell kernels, set by {CORETYPE_ENV}" in pinned["reason"]
    assert chosen["core"] and f"{chosen['core']} kernels" in chosen["reason"] and CORETYPE_ENV not in chosen["reason"]
    for name in ("matmul", "conv"):  # other kernels sum in another order, nothing more
        np.testing.assert_allclose(chosen_out[name], pinned_out[name], rtol=1e-5, atol=1e-4, err_msg=name)
