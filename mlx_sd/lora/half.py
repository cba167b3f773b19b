"""float32 -> float16 for the merge, bit-identical to `astype` but vectorised.

mlx's CPU backend narrows to float16 one element at a time (about 2 ns each on this CPU), a large part
of a LoRA merge. As integer operations on the bits, compiled, mlx fuses it into one vectorised pass
(float operations on reinterpreted bits inside the compiled function would split the fusion, so the
values come in twice: as floats and as bits). Rounding is to nearest even; subnormals, infinities and
NaNs come out as `astype` makes them (tests/test_lora_half.py compares samples of every float32 range).
The other way, mlx's float16 -> float32 is faster than any such formulation (its subnormals need a
normalisation that does not vectorise), so the merge keeps `astype` there.
"""

from __future__ import annotations

import mlx.core as mx

_MANTISSA_SHIFT = 13  # float32 has 13 more mantissa bits than float16
_REBIAS = (127 - 15) << 23  # float32's exponent bias minus float16's, in float32's exponent field
_INF16, _INF32 = 0x7C00, 0x7F800000
_NAN16 = 0x7D00  # the NaN mlx's astype makes of every float32 NaN (with its sign)
_SMALLEST_NORMAL16 = 0x38800000  # 2^-14 as float32 bits: below it float16 is subnormal
_OVERFLOW = 0x477FF000  # 65520 as float32 bits: from here float16 rounds to infinity


@mx.compile
def _narrow_bits(values: mx.array, bits: mx.array) -> mx.array:
    """float32 values (and the same as uint32 bits) -> uint16 bits of float16."""
    magnitude = bits & 0x7FFFFFFF
    odd = (magnitude >> _MANTISSA_SHIFT) & 1  # adding 0xFFF + odd rounds the dropped bits to even
    normal = (magnitude - _REBIAS + 0xFFF + odd) >> _MANTISSA_SHIFT
    # below 2^-14, in units of 2^-24: adding 2^23 leaves a float32 no fraction bits, so the FPU rounds
    # to an integer, to even (mx.round does the same, element by element)
    subnormal = (mx.abs(values) * 2.0**24 + 2.0**23).astype(mx.uint32) - (1 << 23)
    large = mx.where(magnitude > _INF32, _NAN16, _INF16)
    narrowed = mx.where(magnitude < _SMALLEST_NORMAL16, subnormal, mx.where(magnitude < _OVERFLOW, normal, large))
    return (narrowed | ((bits >> 16) & 0x8000)).astype(mx.uint16)


def narrow(values: mx.array) -> mx.array:
    """`values.astype(float16)` for a float32 array."""
    return mx.view(_narrow_bits(values, mx.view(values, mx.uint32)), mx.float16)
