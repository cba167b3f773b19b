"""The CPU's one-pass LoRA merge (csrc/lora_merge.cpp, mlx_sd.cpu.lora_merge) against the plain formula:
float16 results narrowed exactly as mlx's astype narrows, sums within one float16 ulp of the plain
merge's (only the product's summation order differs), the same bits on any number of threads."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_sd.cpu import kernels
from mlx_sd.cpu.lora_merge import CpuMerging
from mlx_sd.cpu.options import CpuOptions
from mlx_sd.lora.deltas import LayerDelta
from mlx_sd.lora.merge import Merging

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"CPU kernels: {kernels.status().reason}")


def _bits(array: mx.array) -> np.ndarray:
    return np.array(mx.view(array, mx.uint16)).astype(np.int64)


def _narrowed_by_kernel(values: mx.array) -> mx.array:
    zeros = mx.zeros((1, values.size), dtype=mx.float16)
    return kernels.lora_merge(zeros, values.reshape(1, -1), None, None, 2)


@pytest.mark.parametrize("start", range(0, 2**32, 2**29))
def test_narrowing_is_astype_bit_for_bit(start):
    # a stride through every float32 range (both signs, subnormals, overflow, infinities, NaNs), plus the edges
    rng = np.random.default_rng(start)
    bits = np.arange(start, start + 2**29, 2**11, dtype=np.uint64) + rng.integers(0, 2**11, 2**18)
    edges = [0x00000000, 0x33000000, 0x33000001, 0x337FFFFF, 0x38800000, 0x387FFFFF, 0x477FE000, 0x477FEFFF,
             0x477FF000, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7F800001, 0x7FC00000, 0xFFFFFFFF]  # fmt: skip
    values = mx.view(mx.array(np.concatenate([bits, edges]).astype(np.uint32)), mx.float32)
    expected = (mx.zeros(values.shape) + values).astype(mx.float16)  # what the plain merge adds to a zero base
    ours, theirs = _bits(_narrowed_by_kernel(values)), _bits(expected)
    wrong = np.nonzero(ours != theirs)[0]
    assert wrong.size == 0, [(hex(int(np.array(mx.view(values, mx.uint32))[i])), hex(ours[i]), hex(theirs[i])) for i in wrong[:5]]


SHAPES = [(8, 12, 2), (37, 1000, 5), (320, 2880, 32), (64, 4 * 16 + 3, 64)]


@pytest.mark.parametrize("rows,cols,rank", SHAPES)
@pytest.mark.parametrize("dtype", [mx.float16, mx.float32])
@pytest.mark.parametrize("dense", [False, True])
def test_equals_the_plain_merge(rows, cols, rank, dtype, dense):
    rng = np.random.default_rng(rows * cols)
    base = mx.array(rng.standard_normal((rows, cols), dtype=np.float32)).astype(dtype)
    up = mx.array(rng.standard_normal((rows, rank), dtype=np.float32) * 0.1)
    down = mx.array(rng.standard_normal((rank, cols), dtype=np.float32) * 0.1)
    extra = mx.array(rng.standard_normal((rows, cols), dtype=np.float32) * 0.01) if dense else None
    delta = LayerDelta((rows, cols), extra, up, down)
    plain = Merging().merged(base, delta)
    ours = {threads: CpuMerging(CpuOptions(kernels=True, threads=threads)).merged(base, delta) for threads in (1, 3)}
    assert ours[1].dtype == dtype and ours[1].shape == base.shape
    assert mx.array_equal(ours[1], ours[3]).item()  # rows are split between threads, never sums
    if dtype == mx.float16:
        ulps = np.abs(_bits(ours[1]) - _bits(plain))
        assert ulps.max() <= 1 and ulps.mean() < 0.01
    else:
        assert mx.abs(ours[1] - plain).max().item() <= 1e-6 * max(1.0, mx.abs(plain).max().item())


def test_a_conv_weight_and_a_bias_keep_their_shapes():
    rng = np.random.default_rng(1)
    weight = mx.array(rng.standard_normal((16, 3, 3, 8), dtype=np.float32)).astype(mx.float16)
    up, down = (mx.array(rng.standard_normal(shape, dtype=np.float32)) for shape in ((16, 4), (4, 72)))
    merging = CpuMerging(CpuOptions(kernels=True, threads=2))
    merged = merging.merged(weight, LayerDelta(weight.shape, up=up, down=down))
    plain = Merging().merged(weight, LayerDelta(weight.shape, up=up, down=down))
    assert merged.shape == weight.shape and np.abs(_bits(merged) - _bits(plain)).max() <= 1
    bias, change = mx.zeros((16,), dtype=mx.float16), mx.arange(16, dtype=mx.float32)
    assert mx.array_equal(merging.merged(bias, LayerDelta((16,), change)), change.astype(mx.float16)).item()


def test_without_kernels_or_for_bfloat16_the_plain_formula():
    base = mx.ones((4, 20), dtype=mx.bfloat16)
    delta = LayerDelta((4, 20), mx.full((4, 20), 0.5))
    for merging in (CpuMerging(CpuOptions(kernels=False, threads=2)), CpuMerging(CpuOptions(kernels=True, threads=2))):
        assert mx.array_equal(merging.merged(base, delta), Merging().merged(base, delta)).item()
