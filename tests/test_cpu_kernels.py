"""mlx-sd's compiled CPU kernels (mlx_sd.cpu.kernels: attention, GroupNorm, GEMM and convolution
taps): built here, exact, and never a failure.

The test environment installs a C++ compiler and nanobind (.ci/run, pyproject), so the kernel must
build; where it cannot, the engine falls back to its pure-mlx attention and says why.
"""

from __future__ import annotations

import ctypes
import stat
from pathlib import Path


import mlx.core as mx
import numpy as np
import pytest

from mlx_sd import device, layers
from mlx_sd.cpu import blas, convolution, kernels as cpu_kernels
from mlx_sd.cpu.accelerate import accelerate
from mlx_sd.cpu.options import CpuOptions, product

KERNELS = CpuOptions(kernels=True, threads=2)


def rand(*shape: int, seed: int) -> mx.array:
    return mx.array(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def reference(q: mx.array, k: mx.array, v: mx.array, scale: float) -> np.ndarray:
    q, k, v = (np.array(a, dtype=np.float64) for a in (q, k, v))
    scores = q @ k.swapaxes(-1, -2) * scale
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v


def test_the_kernel_builds_in_the_test_environment():
    status = cpu_kernels.status()
    assert status.module is not None, status.reason
    assert CpuOptions.for_this_machine().kernels


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    "pairs, queries, keys, dim",
    [
        (2, 100, 100, 40),  # SD1.5's head size, queries over two blocks with a remainder
        (3, 77, 77, 64),  # SD2 / SDXL heads
        (1, 64, 301, 512),  # the VAE's single head: one pair split over threads
        (5, 17, 33, 7),  # nothing a multiple of a tile
        (2, 1, 1, 1),
    ],
)
def test_kernel_matches_float64_attention(pairs, queries, keys, dim, threads):
    q, k, v = rand(pairs, queries, dim, seed=1) * 2, rand(pairs, keys, dim, seed=2) * 2, rand(pairs, keys, dim, seed=3)
    out = cpu_kernels.fused_attention(q, k, v, dim**-0.5, threads)
    assert out.shape == (pairs, queries, dim) and out.dtype == mx.float32
    assert np.abs(np.array(out) - reference(q, k, v, dim**-0.5)).max() < 1e-5


def test_kernel_takes_half_and_strided_inputs_and_large_score_ranges():
    q = (rand(2, 40, 16, seed=4) * 30).astype(mx.float16)  # scores spanning thousands: exp2 clamps
    k = rand(16, 2, 50, seed=5).transpose(1, 2, 0)  # not contiguous
    v = rand(2, 50, 16, seed=6)
    out = cpu_kernels.fused_attention(q, k, v, 1.0, 2)
    # float32 scores of ~200 round by ~1e-5, and the weights of two near-tied keys with them
    assert np.abs(np.array(out) - reference(q.astype(mx.float32), k, v, 1.0)).max() < 1e-4


def test_kernel_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        cpu_kernels.fused_attention(rand(2, 8, 4, seed=1), rand(2, 9, 5, seed=2), rand(2, 9, 4, seed=3), 0.5, 1)


def test_kernel_runs_on_both_worker_streams_at_once():
    """CFG's halves run the kernel concurrently, one on each worker stream."""
    q, k, v = (rand(2, 200, 320, seed=s) for s in (7, 8, 9))
    outputs = []
    attention = accelerate(layers.DotProductAttention(8), KERNELS)
    for stream, row in zip(device.worker_streams("cpu"), range(2)):
        with mx.stream(stream):
            outputs.append(attention(q[row : row + 1], k[row : row + 1], v[row : row + 1]))
    mx.eval(*outputs)
    whole = np.array(layers.DotProductAttention(8)(q, k, v))
    assert np.abs(np.concatenate([np.array(o) for o in outputs]) - whole).max() < 1e-5


def test_attention_uses_one_thread_on_a_worker_stream_and_every_core_otherwise(monkeypatch):
    calls = []
    real = cpu_kernels.fused_attention
    monkeypatch.setattr(cpu_kernels, "fused_attention", lambda *args: calls.append(args[-1]) or real(*args))
    q = rand(1, 20, 32, seed=10)
    attention = accelerate(layers.DotProductAttention(2), KERNELS)
    attention(q, q, q)
    with mx.stream(device.worker_streams("cpu")[-1]):
        attention(q, q, q)
    assert calls == [KERNELS.threads, 1]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    "batch, rows, depth, cols",
    [
        (1, 4096 + 5, 40, 64 + 3),  # many rows (split over threads) and a column remainder
        (2, 77, 768, 320),  # SD's cross-attention keys: few rows, so threads split the columns
        (1, 13, 1000, 33),  # depth over two blocks, nothing a multiple of a tile
        (1, 1100, 50, 700),  # columns over two blocks (at most 384 each) and a remainder
        (3, 1, 1, 1),
    ],
)
def test_gemm_matches_float64(batch, rows, depth, cols, threads):
    a, weight, bias = rand(batch, rows, depth, seed=40), rand(cols, depth, seed=41), rand(cols, seed=42)
    expected = np.array(a, dtype=np.float64) @ np.array(weight, dtype=np.float64).T
    for b, with_bias in ((weight.T, True), (mx.contiguous(weight.T), False)):  # transposed view, row-major
        got = cpu_kernels.gemm(a, b, bias if with_bias else None, threads)
        assert got.shape == (batch, rows, cols) and got.dtype == mx.float32
        assert np.abs(np.array(got) - expected - (np.array(bias) if with_bias else 0)).max() < 2e-5 * depth**0.5


def test_gemm_reads_strided_rows_and_half_inputs_and_rejects_mismatches():
    a = rand(2, 30, 48, seed=43)
    window, weight = a[:, 3:20, 8:40], rand(32, 16, seed=44)  # rows of 48 floats, 32 of them used
    expected = np.array(window, dtype=np.float64) @ np.array(weight, dtype=np.float64)
    assert np.abs(np.array(cpu_kernels.gemm(window, weight, None, 2)) - expected).max() < 1e-4
    for dtype in (mx.float16, mx.bfloat16):  # half-precision weights are converted as they are packed
        half = cpu_kernels.gemm(window, weight.astype(dtype), None, 1)
        exact = np.array(window, dtype=np.float64) @ np.array(weight.astype(dtype).astype(mx.float32), dtype=np.float64)
        assert half.dtype == mx.float32 and np.abs(np.array(half) - exact).max() < 1e-4
        transposed = cpu_kernels.gemm(window.astype(dtype), mx.contiguous(weight.T).astype(dtype).T, None, 2)
        assert np.abs(np.array(transposed) - expected).max() < 0.1
    with pytest.raises(ValueError, match="taps x in"):
        cpu_kernels.gemm(a, weight, None, 1)
    with pytest.raises(ValueError, match="bias"):
        cpu_kernels.gemm(window, weight, mx.zeros((3,)), 1)


def conv_reference(x: mx.array, stacked: mx.array, bias: mx.array, taps: list[tuple[int, int]]) -> np.ndarray:
    x64, w64 = np.array(x, dtype=np.float64), np.array(stacked, dtype=np.float64)
    batch, height, width, channels = x64.shape
    reach = max(max(abs(dy), abs(dx)) for dy, dx in taps)
    padded = np.pad(x64, [(0, 0), (reach, reach), (reach, reach), (0, 0)])
    out = np.zeros((batch, height, width, w64.shape[1])) + np.array(bias)
    for t, (dy, dx) in enumerate(taps):
        shifted = padded[:, reach + dy : reach + dy + height, reach + dx : reach + dx + width]
        out += shifted @ w64[t * channels : (t + 1) * channels]
    return out


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    "batch, height, width, channels, out, taps",
    [
        (2, 9, 13, 16, 24, [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]),  # a 3x3 convolution
        (1, 40, 30, 8, 40, [(-1, 1), (0, 0), (1, -1)]),  # rows over several panels and image rows
        (1, 3, 2, 5, 3, [(0, 0), (0, 1), (1, 0), (1, 1)]),  # an upsampling phase's 2x2 taps, tiny image
        (1, 1, 1, 4, 4, [(-1, -1), (0, 0)]),  # a tap that reads only the padding
    ],
)
def test_conv_taps_match_a_padded_float64_convolution(batch, height, width, channels, out, taps, threads):
    x = rand(batch, height, width, channels, seed=45)
    stacked, bias = rand(len(taps) * channels, out, seed=46), rand(out, seed=47)
    got = cpu_kernels.conv_taps(x, stacked, bias, taps, threads)
    assert got.shape == (batch, height, width, out) and got.dtype == mx.float32
    assert np.abs(np.array(got) - conv_reference(x, stacked, bias, taps)).max() < 1e-4


needs_bf16 = pytest.mark.skipif(not cpu_kernels.bf16_products(), reason="bfloat16 products need AVX512_BF16")


def bfloat16_rounded(x: mx.array) -> mx.array:
    return x.astype(mx.bfloat16).astype(mx.float32)


@needs_bf16
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "batch, rows, depth, cols",
    [(1, 4096 + 5, 40, 64 + 3), (2, 77, 768, 320), (1, 13, 1001, 33), (3, 1, 1, 1), (2, 30, 35, 17)],
)
def test_bf16_gemm_is_the_float64_product_of_bfloat16_rounded_factors(batch, rows, depth, cols, threads):
    """vdpbf16ps multiplies bfloat16 factors exactly and sums in float32: against float64 on the
    rounded factors the error is float32 summation's alone (odd depths pad a pair with a zero)."""
    a, weight, bias = rand(batch, rows, depth, seed=50), rand(cols, depth, seed=51), rand(cols, seed=52)
    factors = np.array(bfloat16_rounded(a), dtype=np.float64), np.array(bfloat16_rounded(weight), dtype=np.float64)
    expected = factors[0] @ factors[1].T + np.array(bias)
    scale = np.abs(factors[0]) @ np.abs(factors[1]).T + np.abs(np.array(bias))
    for b in (weight.T, mx.contiguous(weight.T), weight.astype(mx.float16).T, mx.contiguous(weight.T).astype(mx.bfloat16)):
        got = cpu_kernels.gemm(a, b, bias, threads, True)
        assert got.shape == (batch, rows, cols) and got.dtype == mx.float32
        if b.dtype == mx.float16:  # float16 weights are rounded once more, to bfloat16
            exact = np.array(bfloat16_rounded(b.astype(mx.float32)), dtype=np.float64)
            reference = factors[0] @ exact + np.array(bias)
        else:
            reference = expected
        assert (np.abs(np.array(got) - reference) / scale).max() < 1e-6
    # and the whole product is bfloat16-close to float32's
    plain = np.array(a, dtype=np.float64) @ np.array(weight, dtype=np.float64).T + np.array(bias)
    assert (np.abs(np.array(cpu_kernels.gemm(a, weight.T, bias, threads, True)) - plain) / scale).max() < 1e-2


@needs_bf16
@pytest.mark.parametrize(
    "batch, height, width, channels, out, taps",
    [
        (2, 9, 13, 16, 24, [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]),
        (1, 40, 30, 7, 40, [(-1, 1), (0, 0), (1, -1)]),  # odd channels: pairs straddle no tap
        (1, 1, 1, 4, 4, [(-1, -1), (0, 0)]),
    ],
)
def test_bf16_conv_taps_are_the_float64_convolution_of_bfloat16_rounded_factors(batch, height, width, channels, out, taps):
    x = rand(batch, height, width, channels, seed=53)
    stacked, bias = rand(len(taps) * channels, out, seed=54), rand(out, seed=55)
    got = cpu_kernels.conv_taps(x, stacked, bias, taps, 2, True)
    expected = conv_reference(bfloat16_rounded(x), bfloat16_rounded(stacked), bias, taps)
    scale = conv_reference(mx.abs(bfloat16_rounded(x)), mx.abs(bfloat16_rounded(stacked)), mx.abs(bias), taps)
    assert got.shape == (batch, height, width, out)
    assert (np.abs(np.array(got) - expected) / scale).max() < 1e-6


def test_bf16_products_follow_the_options(monkeypatch):
    flags = []
    real = cpu_kernels.gemm
    monkeypatch.setattr(cpu_kernels, "gemm", lambda *args: flags.append(args[4]) or real(*args[:4], False))
    x, weight = rand(3, 5, 8, seed=56), rand(8, 6, seed=57)
    options = CpuOptions(kernels=True, threads=2)
    product(options, x, weight)
    options.products = "bfloat16"  # what Pipeline.generate sets from the pipeline's precision
    product(options, x, weight)
    assert not convolution.winograd_wins(options, 1 << 20, 1280, 1280)  # the bfloat16 taps beat Winograd
    options.products = "float32"
    product(options, x, weight)
    assert flags == [False, True, False]
    with pytest.raises(ValueError, match="precision 'float16'"):
        device.check_precision("float16")


def test_bf16_products_are_refused_where_the_cpu_has_none(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "bf16_products", lambda: False)
    with pytest.raises(ValueError, match="AVX512_BF16"):
        device.check_precision("bfloat16", "cpu")
    device.check_precision("bfloat16", "gpu")  # the GPU computes in the storage dtype anyway


def test_products_use_one_thread_on_a_worker_stream_and_every_core_otherwise(monkeypatch):
    calls = []
    real = cpu_kernels.gemm
    monkeypatch.setattr(cpu_kernels, "gemm", lambda *args: calls.append(args[3]) or real(*args))
    x, weight = rand(3, 5, 8, seed=48), rand(8, 6, seed=49)
    expected = np.array(x) @ np.array(weight)
    assert np.abs(np.array(product(KERNELS, x, weight)) - expected).max() < 1e-5
    with mx.stream(device.worker_streams("cpu")[0]):
        assert product(KERNELS, x, weight).shape == (3, 5, 6)
    assert calls == [KERNELS.threads, 1]


def test_openblas_keeps_one_thread_beside_the_kernels():
    if blas.STATUS.openblas_path is None:
        pytest.skip("OpenBLAS is not bound here")
    assert cpu_kernels.available()
    assert ctypes.CDLL(blas.STATUS.openblas_path).openblas_get_num_threads() == 1


def group_norm_reference(x: mx.array, weight: mx.array, bias: mx.array, groups: int, eps: float, silu: bool) -> np.ndarray:
    x64 = np.array(x, dtype=np.float64)
    batch, rows, channels = x64.shape
    grouped = x64.reshape(batch, rows, groups, channels // groups)
    mean = grouped.mean(axis=(1, 3), keepdims=True)
    var = grouped.var(axis=(1, 3), keepdims=True)
    y = ((grouped - mean) / np.sqrt(var + eps)).reshape(x64.shape) * np.array(weight) + np.array(bias)
    return y / (1 + np.exp(-y)) if silu else y


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("batch, rows, channels, groups", [(2, 63, 64, 32), (1, 300, 96, 32), (2, 4, 20, 2), (1, 1, 8, 8)])
def test_group_norm_kernel_matches_float64(batch, rows, channels, groups, silu):
    x = rand(batch, rows, channels, seed=14) * 3 + 2  # an offset mean tests the centring
    weight, bias = rand(channels, seed=15) + 1, rand(channels, seed=16)
    got = cpu_kernels.group_norm(x, weight, bias, groups, 1e-6, silu)
    assert got.shape == x.shape and got.dtype == mx.float32
    assert np.abs(np.array(got) - group_norm_reference(x, weight, bias, groups, 1e-6, silu)).max() < 1e-5


def test_group_norm_kernel_saturates_silu_and_rejects_bad_groups():
    x = mx.array(np.array([[[-300.0, -90.0, 0.0, 90.0]]], dtype=np.float32)).reshape(1, 4, 1)
    got = np.array(cpu_kernels.group_norm(x, mx.array([100.0]), mx.array([0.0]), 1, 0.0, True)).ravel()
    assert np.isfinite(got).all() and got[0] == pytest.approx(0.0, abs=1e-30) and got[-1] > 100
    with pytest.raises(ValueError, match="groups"):
        cpu_kernels.group_norm(rand(1, 4, 6, seed=1), mx.ones((6,)), mx.zeros((6,)), 4, 1e-6, False)


def test_masked_attention_falls_back_to_the_chunked_formulation(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "fused_attention", lambda *args: pytest.fail("the kernel takes no mask"))
    q, k, v = (rand(2, 77, 96, seed=s) for s in (11, 12, 13))
    mask = layers.causal_mask(77)
    got = accelerate(layers.DotProductAttention(6), KERNELS)(q, k, v, mask)
    assert np.abs(np.array(got) - np.array(layers.DotProductAttention(6)(q, k, v, mask))).max() < 1e-5


def _counting_compiler(tmp_path: Path, exit_code: int | None = None) -> tuple[str, Path]:
    """A compiler wrapper that counts its runs, then runs g++ (or fails with `exit_code`)."""
    count = tmp_path / "runs"
    script = tmp_path / "cxx"
    run = f"exit {exit_code}" if exit_code is not None else 'exec g++ "$@"'
    script.write_text(f'#!/bin/sh\necho run >> "{count}"\necho "fatal error: no such header" >&2\n{run}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), count


def test_a_build_is_cached_and_reused(tmp_path):
    compiler, runs = _counting_compiler(tmp_path)
    first = cpu_kernels.load(compiler, tmp_path / "cache")
    assert first.module is not None, first.reason
    again = cpu_kernels.load(compiler, tmp_path / "cache")
    assert again.module is not None and runs.read_text().count("run") == 1
    assert [p.suffix for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == [".so"]


def test_a_failed_build_is_reported_and_leaves_the_mlx_formulation(tmp_path, monkeypatch):
    compiler, _ = _counting_compiler(tmp_path, exit_code=1)
    status = cpu_kernels.load(compiler, tmp_path / "cache")
    assert status.module is None and "failed" in status.reason and "no such header" in status.reason
    assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-written is left to load
    monkeypatch.setattr(cpu_kernels, "status", lambda: status)
    assert not CpuOptions.for_this_machine().kernels  # the CPU path keeps mlx's ops
    with pytest.raises(RuntimeError, match="unavailable"):
        cpu_kernels.fused_attention(rand(1, 2, 2, seed=1), rand(1, 2, 2, seed=1), rand(1, 2, 2, seed=1), 1.0, 1)


def test_missing_compiler_or_opt_out_are_reported(tmp_path, monkeypatch):
    missing = cpu_kernels.load("no-such-c++-compiler", tmp_path)
    assert missing.module is None and "install g++" in missing.reason
    monkeypatch.setenv(cpu_kernels.DISABLE_ENV, "1")
    disabled = cpu_kernels.load(None, tmp_path)
    assert disabled.module is None and cpu_kernels.DISABLE_ENV in disabled.reason
    assert not any(tmp_path.iterdir())


def test_the_kernel_source_ships_with_the_package():
    assert {path.name for path in cpu_kernels.sources()} >= {"fused_attention.cpp", "group_norm.cpp", "module.cpp"}
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"csrc/*.cpp", "csrc/*.h"' in pyproject and "nanobind" in pyproject
