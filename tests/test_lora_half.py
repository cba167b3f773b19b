"""The merge's float32 -> float16 cast is bit-identical to mlx's astype."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_sd.lora.half import narrow


def _bits16(array: mx.array) -> np.ndarray:
    return np.array(mx.view(array, mx.uint16))


def _assert_narrows_like_astype(bits32: mx.array) -> None:
    values = mx.view(bits32.astype(mx.uint32), mx.float32)
    ours, theirs = _bits16(narrow(values)), _bits16(values.astype(mx.float16))
    wrong = np.nonzero(ours != theirs)[0]
    assert wrong.size == 0, [(hex(int(np.array(bits32)[i])), hex(ours[i]), hex(theirs[i])) for i in wrong[:5]]


def test_every_float16_and_every_tie_between_neighbours():
    # each float16 exactly, and each midpoint between neighbours (a tie: rounds to the even one)
    every = mx.arange(0, 0x10000, dtype=mx.uint32).astype(mx.uint16)
    widened = mx.view(every, mx.float16).astype(mx.float32)
    _assert_narrows_like_astype(mx.view(widened, mx.uint32))
    finite = np.array(widened)[np.isfinite(np.array(widened))]
    positive = np.unique(finite[finite >= 0])
    ties = (positive[:-1].astype(np.float64) + positive[1:]) / 2  # exact in float32: one more bit
    for sign in (1, -1):
        _assert_narrows_like_astype(mx.view(mx.array((sign * ties).astype(np.float32)), mx.uint32))


@pytest.mark.parametrize("start", range(0, 2**32, 2**28))
def test_a_sample_of_every_float32_range(start):
    # a stride through the whole range (both signs, subnormals, overflow, infinities, NaNs) with random offsets
    rng = np.random.default_rng(start)
    bits = np.arange(start, start + 2**28, 2**10, dtype=np.uint64) + rng.integers(0, 2**10, 2**18)
    _assert_narrows_like_astype(mx.array(bits.astype(np.uint32)))


def test_the_edges():
    edges = [0x00000000, 0x80000000, 0x33000000, 0x33000001, 0x337FFFFF, 0x38800000, 0x387FFFFF, 0x477FE000,
             0x477FEFFF, 0x477FF000, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7F800001, 0x7FC00000, 0xFFFFFFFF]
    _assert_narrows_like_astype(mx.array(np.array(edges, dtype=np.uint32)))
