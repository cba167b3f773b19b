"""Per-device choices, kept in one place.

On the CPU mlx's float16/bfloat16 matmuls run at about 5 GFLOPS against ~200 for float32 with
OpenBLAS, so the CPU always computes in float32 whatever the storage dtype. On the GPU (Metal, CUDA)
half precision is the fast path. Layers ask this module rather than testing the device themselves.

The CPU formulations (issue 6; figures from `python -m benchmarks.run`), all in float32:
- attention "kernel": mlx-sd's fused C++ attention (mlx_sd.cpu_kernels), compiled on first use;
  where it cannot be built, "chunked": exact attention in blocks of heads and queries with a
  polynomial exp2 and the softmax normalised after the product with v (mlx's CPU softmax spends
  ~11 ns an element in exp).
- element-wise "polynomial": SiLU, GELU and GroupNorm(+SiLU) as relu minus a rational bump, in
  mx.compile kernels shallow enough to fuse and free of the ops that keep mlx's JIT loops scalar;
  GroupNorm(+SiLU) "kernel": a compiled kernel (mlx_sd.cpu_kernels) of two passes instead of five.
- matmul "kernel": a compiled GEMM (mlx_sd.cpu_kernels) for the CPU's full vector width, which the
  system BLAS may be pinned below (OPENBLAS_CORETYPE); it also takes a 3x3 convolution's nine
  shifted taps in one call. Under `products_in("bfloat16")` (a pipeline's `precision`), on CPUs
  with AVX512_BF16, it multiplies bfloat16-rounded factors into float32 sums at 1.7-1.9x the
  float32 rate (as torch's bfloat16 autocast: activations, norms and attention stay float32).
- conv "matmul": 1x1 convolutions as matmuls; 3x3 ones with many channels by Winograd F(2x2, 3x3),
  other wide 3x3 ones as nine shifted matmuls (no 9x patch buffer); nearest 2x upsampling and its
  3x3 conv as four 2x2 convolutions of the small image (mlx_sd.layers.upsample_conv).
- freed activations kept in glibc's heap for reuse (mlx_sd.cpu_memory): otherwise every one over
  32 MB comes fresh from the OS and each of its pages costs a fault.
- the text encoders keep their float16/bfloat16 weights and promote them to float32 inside each op
  (run once per prompt, a resident float32 copy would cost more memory than the casts cost time);
  with the compiled GEMM, which converts them as it packs them, the UNet keeps its own too.
- two worker streams, one per core: weight casts at load and, without the compiled kernels, the
  halves of the UNet's CFG batch (mlx runs each stream's element-wise work on one thread); the VAE
  decoder evaluated resnet by resnet.
The GPU keeps mlx's fused kernels: mx.fast.scaled_dot_product_attention, mx.conv2d, mlx's activations.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

import mlx.core as mx

from .cpu import kernels as cpu_kernels

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
PRECISIONS = ("float32", "bfloat16")  # of the CPU's products (products_in)
ATTENTION_CHUNK_BYTES = 16 << 20  # scores per block: stays in a 32 MB L3; larger blocks gain nothing


@dataclass(frozen=True)
class DevicePolicy:
    device: str  # "cpu" or "gpu"
    compute_dtype: mx.Dtype
    # "fused": mx.fast.scaled_dot_product_attention; "matmul": explicit q@k^T, softmax, @v;
    # "chunked": matmul over query chunks with a polynomial exp2 (float32); "kernel": the
    # compiled CPU kernel of mlx_sd.cpu_kernels (float32).
    attention: str
    # "native": mlx's activations and GroupNorm; "polynomial": the fused float32 forms in mlx_sd.layers.
    elementwise: str = "native"
    # GroupNorm(+SiLU) in float32: "kernel", the compiled CPU kernel of mlx_sd.cpu_kernels; otherwise
    # as `elementwise` says.
    group_norm: str = "native"
    # float32 products (Linear layers and the matmul convolutions): "kernel", the compiled GEMM of
    # mlx_sd.cpu_kernels; "native": mlx's matmul (the system BLAS).
    matmul: str = "native"
    # The compiled GEMM's factors: "float32", or "bfloat16" (rounded, summed in float32; products_in).
    products: str = "float32"
    # "native": mx.conv2d; "matmul": 1x1 and wide 3x3 convolutions as matmuls (float32, mlx_sd.layers.Conv2d).
    conv: str = "native"
    attention_chunk_bytes: int = ATTENTION_CHUNK_BYTES
    # quantized Linear layers (mlx_sd.quantize): "kernel": mx.quantized_matmul; "dequantize": a
    # float32 copy of the weight per call for a BLAS matmul (mlx's CPU quantized matmul is scalar).
    quantized: str = "kernel"
    # Streams that a batch of two or more rows is split over (mlx_sd.layers.in_batch_halves): on
    # the CPU each stream runs its element-wise work on its own thread, so CFG's negative and
    # positive rows keep both cores busy where mlx's ops do the heavy work. With the compiled
    # kernels, which use every core themselves, the batch runs whole: mlx schedules the two
    # halves' graphs largely one after the other (it queues ops breadth-first only 20 wide), so
    # single-threaded kernels on each half left a core idle (SD1.5 UNet step 9.8-11.5 s against
    # 6.0-7.0 s whole, same MLX peak). The GPU runs a batch best whole.
    batch_streams: int = 1
    # Evaluate the VAE decoder resnet by resnet (mlx_sd.layers.between_blocks): lazily, mlx keeps more
    # of the 512x512 activations alive at once (SD's VAE decode at 512: MLX peak 2.19 -> 1.61 GB on the
    # CPU, same time, evaluating per block; with the compiled GEMM's few large ops, whose outputs mlx
    # allocates when it queues them, per block 2.49 GB and per resnet 1.41 GB); the GPU overlaps its
    # work best with the whole graph.
    eval_blocks: bool = False
    # Keep the text encoders' weights in the storage dtype and let each op promote them to the
    # compute dtype (mlx_sd.clip.CLIPTextModel.compute_dtype): they run once per prompt, so on the
    # CPU a resident float32 copy costs more memory (SD1.5 0.25 GB, SDXL 1.6 GB) than its casts cost time.
    text_encoders_in_storage_dtype: bool = False
    # Keep the UNet's weights in the storage dtype too: the compiled GEMM converts float16 and bfloat16
    # weights to float32 as it packs them, so a resident float32 copy would only cost memory (SD1.5
    # 1.7 GB, SDXL 5.1 GB) and load time (the cast and first touch of every float32 page).
    unet_in_storage_dtype: bool = False


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
        compiled = cpu_kernels.available()
        return DevicePolicy(
            "cpu", mx.float32, attention="kernel" if compiled else "chunked", elementwise="polynomial",
            group_norm="kernel" if compiled else "native", matmul="kernel" if compiled else "native",
            products=_products.get(), conv="matmul", quantized="dequantize",
            batch_streams=1 if compiled else CPU_STREAMS, eval_blocks=True, text_encoders_in_storage_dtype=True,
            unet_in_storage_dtype=compiled,
        )
    return DevicePolicy("gpu", storage_dtype, attention="fused")


_products: ContextVar[str] = ContextVar("mlx_sd_products", default="float32")


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


@contextmanager
def products_in(precision: str) -> Iterator[None]:
    """The CPU's products built in this context (this thread's) use `precision` (check_precision)."""
    check_precision(precision)
    token = _products.set(precision)
    try:
        yield
    finally:
        _products.reset(token)


# One CPU stream per core of this 2-core machine. Casting SD1.5's UNet weights from float16 to
# float32 at load takes 4.9-5.3 s on one stream and 1.1 s spread over two; four are no faster.
CPU_STREAMS = 2


_thread_streams = threading.local()  # mlx streams belong to the thread that made them


def worker_streams(device: str) -> tuple[mx.Stream, ...]:
    """The streams to spread independent work over on `device` ("cpu" or "gpu"): the weight casts
    of a model load, the halves of a batch. Made once per thread."""
    if device != "cpu":
        return (mx.default_stream(mx.gpu),)
    streams = getattr(_thread_streams, "cpu", None)
    if streams is None:
        streams = _thread_streams.cpu = tuple(mx.new_stream(mx.cpu) for _ in range(CPU_STREAMS))
    return streams


def gpu_available() -> bool:
    try:
        return mx.is_available(mx.gpu)
    except (AttributeError, RuntimeError):
        return False


def available_precisions() -> tuple[str, ...]:
    """The precisions of the CPU's products (PRECISIONS) this machine offers, judged from the CPU's
    flags alone so that asking compiles nothing: bfloat16 needs AVX512_BF16."""
    return PRECISIONS if cpu_kernels.cpu_has_bf16() else PRECISIONS[:1]
