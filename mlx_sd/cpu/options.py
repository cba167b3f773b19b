"""How the CPU path runs on this machine: the compiled kernels or mlx's ops, threads, precision."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from ..device import worker_streams
from . import kernels
from .machine import thread_count

ATTENTION_CHUNK_BYTES = 16 << 20  # scores per block: stays in a 32 MB L3; larger blocks gain nothing


@dataclass
class CpuOptions:
    """Shared by every accelerated module of one pipeline; `products` may change between runs
    (the pipeline's precision) without rebuilding anything."""

    kernels: bool  # mlx-sd's compiled kernels (mlx_sd.cpu.kernels) are loaded
    threads: int  # the compiled kernels' threads, and the streams a batch is split over without them
    products: str = "float32"  # the compiled GEMM's factors: "float32", or "bfloat16" (rounded, summed in float32)
    attention_chunk_bytes: int = ATTENTION_CHUNK_BYTES

    @classmethod
    def for_this_machine(cls) -> "CpuOptions":
        return cls(kernels=kernels.available(), threads=thread_count())

    @property
    def bf16(self) -> bool:
        return self.kernels and self.products == "bfloat16"

    def kernel_threads(self) -> int:
        """One on a worker stream (work on the other streams keeps the other cores busy), all otherwise."""
        return 1 if mx.default_stream(mx.cpu) in worker_streams("cpu") else self.threads


def product(options: CpuOptions, x: mx.array, weight_t: mx.array, bias: mx.array | None = None) -> mx.array:
    """bias + x @ weight_t for x (..., in) and weight_t (in, out), which may be a transposed view.

    In float32 with the compiled kernels, mlx-sd's GEMM: the CPU's full vector width where the
    system BLAS may be pinned to a narrower one, half-precision weights converted as they are
    packed, bfloat16 products where the options say so; otherwise mlx's matmul (the system BLAS).
    """
    if options.kernels and x.dtype == mx.float32:
        rows = x.reshape(1, -1, x.shape[-1])
        out = kernels.gemm(rows, weight_t, bias, options.kernel_threads(), options.bf16)
        return out.reshape(*x.shape[:-1], weight_t.shape[-1])
    return mx.addmm(bias, x, weight_t) if bias is not None else x @ weight_t
