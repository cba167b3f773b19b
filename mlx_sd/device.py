"""Per-device choices, kept in one place.

On the CPU mlx's float16/bfloat16 matmuls run at about 5 GFLOPS against ~200 for float32 with
OpenBLAS, so the CPU always computes in float32 whatever the storage dtype. On the GPU (Metal, CUDA)
half precision is the fast path. Layers ask this module rather than testing the device themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


@dataclass(frozen=True)
class DevicePolicy:
    device: str  # "cpu" or "gpu"
    compute_dtype: mx.Dtype
    # "fused": mx.fast.scaled_dot_product_attention; "matmul": explicit q@k^T, softmax, @v.
    attention: str


def dtype_from_name(name: str) -> mx.Dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: mx.Dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}")


def current_device() -> str:
    return "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"


def policy(storage_dtype: mx.Dtype = mx.float16, device: str | None = None) -> DevicePolicy:
    """The compute dtype and kernels to use for weights stored as `storage_dtype` on `device`."""
    device = device or current_device()
    if device == "cpu":
        return DevicePolicy("cpu", mx.float32, attention="matmul")
    return DevicePolicy("gpu", storage_dtype, attention="fused")


def gpu_available() -> bool:
    try:
        return mx.is_available(mx.gpu)
    except (AttributeError, RuntimeError):
        return False
