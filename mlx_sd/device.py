"""The device a pipeline computes on, the dtypes it computes in, and what the machine can run.

On the CPU, mlx's float16/bfloat16 matmuls are far slower than float32 with OpenBLAS
(docs/performance.md), so the CPU computes in float32 whatever the storage dtype (its formulations are swapped
in at load: mlx_sd.cpu). On the GPU (Metal, CUDA) half precision is the fast path.
"""

from __future__ import annotations

import threading

import mlx.core as mx

from .cpu import kernels as cpu_kernels
from .cpu.machine import thread_count
from .dtypes import DTYPES

PRECISIONS = ("float32", "bfloat16")  # of the CPU's products (mlx_sd.cpu.options.CpuOptions.products)


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


def compute_dtype(storage_dtype: mx.Dtype, device: str | None = None) -> mx.Dtype:
    """The dtype models stored as `storage_dtype` compute in on `device`: float32 on the CPU."""
    return mx.float32 if (device or current_device()) == "cpu" else storage_dtype


class PrecisionError(ValueError):
    """A precision that is unknown, or that this machine cannot run."""


def check_precision(precision: str, device: str | None = None) -> None:
    """Raise PrecisionError unless `precision` is one of PRECISIONS and this machine can run it:
    bfloat16 products need the compiled CPU kernels on a CPU with AVX512_BF16. The GPU computes in
    the weights' storage dtype whatever the precision."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "bfloat16" and (device or current_device()) == "cpu" and not cpu_kernels.bf16_products():
        missing = (
            "this CPU has no AVX512_BF16" if cpu_kernels.available() else f"the CPU kernels: {cpu_kernels.status().reason}"
        )
        raise PrecisionError(
            "bfloat16 products need mlx-sd's compiled CPU kernels on a CPU with AVX512_BF16 (AMD Zen 4 or later, "
            f"Intel Sapphire Rapids or later), and {missing}. Use float32"
        )


def available_precisions() -> tuple[str, ...]:
    """The precisions of the CPU's products (PRECISIONS) this machine offers, judged from the CPU's
    flags alone so that asking compiles nothing: bfloat16 needs AVX512_BF16."""
    return PRECISIONS if cpu_kernels.cpu_has_bf16() else PRECISIONS[:1]


_thread_streams = threading.local()  # mlx streams belong to the thread that made them


def worker_streams(device: str) -> tuple[mx.Stream, ...]:
    """The streams to spread independent work over on `device` ("cpu" or "gpu"): the weight casts
    of a model load, the parts of a batch without the compiled kernels. On the CPU one per core this
    process may use (mlx runs each stream's element-wise work on a thread of its own). Made once per
    thread."""
    if device != "cpu":
        return (mx.default_stream(mx.gpu),)
    streams = getattr(_thread_streams, "cpu", None)
    if streams is None:
        streams = _thread_streams.cpu = tuple(mx.new_stream(mx.cpu) for _ in range(thread_count()))
    return streams


def gpu_available() -> bool:
    try:
        return mx.is_available(mx.gpu)
    except (AttributeError, RuntimeError):
        return False
