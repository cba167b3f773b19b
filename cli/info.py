"""`mlx-sd info [FOLDER | --preset NAME]`: the MLX setup, a converted model, or a preset's size.

Parameter counts come from building the models lazily: MLX does not allocate parameters that are
never evaluated, so even SDXL's 2.6 billion cost nothing here.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import mlx_sd
import mlx.core as mx
from mlx_sd.cpu import blas, kernels as cpu_kernels
from mlx_sd.config import PRESETS, ModelConfig, preset
from mlx_sd.cpu.machine import THREADS_ENV, cache_sizes, thread_count
from mlx_sd.cpu.options import CpuOptions, product
from mlx_sd.device import compute_dtype, current_device, dtype_name, gpu_available
from mlx_sd.infotext import model_hash
from mlx_sd.model_format import read_config, weights_file
from mlx_sd.model_paths import resolve_model_folder
from mlx_sd.pipeline import build_models, parameter_count


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show the MLX setup, a converted model, or a preset architecture's parameter counts",
        description="Show the MLX setup (device, dtype policy, BLAS, matmul speed); with FOLDER also a "
        "converted model; with --preset only the parameter counts of a full-size architecture.",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "folder", nargs="?", help="a converted model folder (holding model.json), or 'demo' for the bundled one"
    )
    target.add_argument("--preset", choices=PRESETS, help="a published architecture, counted without weights")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.preset:
        lines = preset_lines(args.preset)
    else:
        lines = system_lines()
        if args.folder is not None:
            lines += [""] + model_lines(resolve_model_folder(args.folder))
    print("\n".join(lines))
    return 0


def matmul_gflops(size: int = 1024, runs: int = 3) -> float:
    """Measured float32 matmul throughput of the engine's products on the default device (on the
    CPU the compiled GEMM where it is built, which leaves OpenBLAS one thread)."""
    a = mx.random.normal((size, size), key=mx.random.key(0))
    b = mx.random.normal((size, size), key=mx.random.key(1))
    options = CpuOptions.for_this_machine() if current_device() == "cpu" else None
    multiply = (lambda: a @ b) if options is None else (lambda: product(options, a, b))
    mx.eval(a, b, multiply())  # warm-up
    start = time.perf_counter()
    for _ in range(runs):
        mx.eval(multiply())
    seconds = (time.perf_counter() - start) / runs
    return 2 * size**3 / seconds / 1e9


def bf16_line(device: str) -> str:
    if device != "cpu":
        return "not needed on the GPU, which computes in the weights' dtype"
    if cpu_kernels.bf16_products():
        return "available (AVX512_BF16)"
    return "unavailable (they need the CPU kernels on a CPU with AVX512_BF16)"


def system_lines() -> list[str]:
    device = current_device()
    attention = "fused" if device != "cpu" else "kernel" if cpu_kernels.available() else "chunked"
    caches = cache_sizes()
    return [
        f"mlx-sd {mlx_sd.__version__}, mlx {mx.__version__}",
        f"device: {device} (default {mx.default_device()}; GPU available: {'yes' if gpu_available() else 'no'})",
        f"compute dtype: {dtype_name(compute_dtype(mx.float16, device))} for float16 weights, "
        f"{dtype_name(compute_dtype(mx.float32, device))} for float32; attention: {attention}",
        f"CPU threads: {thread_count()} (the cores this process may run on, or {THREADS_ENV}); caches: "
        f"L1 {caches.l1 >> 10} KB, L2 {caches.l2 >> 10} KB, last level {caches.l3 >> 20} MB",
        f"BLAS: {blas.STATUS.openblas_path or 'the BLAS mlx was built with'} ({blas.STATUS.reason})",
        f"CPU kernels: {cpu_kernels.status().reason if device == 'cpu' else 'not used on the GPU'}",
        f"bfloat16 products (--precision bfloat16): {bf16_line(device)}",
        f"float32 1024x1024 matmul: {matmul_gflops():.1f} GFLOPS",
        f"Python {platform.python_version()} on {platform.platform()}",
    ]


def _table(rows: list[tuple[str, int, str]], size_header: str | None) -> list[str]:
    header = f"  {'component':<16}{'parameters':>15}" + (f"{size_header:>14}" if size_header else "")
    lines = [header]
    for name, count, size in rows:
        lines.append(f"  {name:<16}{count:>15,}" + (f"{size:>14}" if size_header else ""))
    lines.append(f"  {'total':<16}{sum(count for _, count, _ in rows):>15,}")
    return lines


def _summary(config: ModelConfig) -> str:
    return (
        f"family: {config.family}, prediction: {config.prediction_type}, "
        f"default size: {config.default_size}x{config.default_size}"
    )


def preset_lines(name: str) -> list[str]:
    config = preset(name)
    rows = [(component, parameter_count(model), "") for component, model in build_models(config).items()]
    return [f"preset {name} ({_summary(config)})"] + _table(rows, None)


def _size_on_disk(path: Path) -> str:
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def model_lines(folder: Path) -> list[str]:
    config = read_config(folder)
    source = config.source
    rows = [
        (component, parameter_count(model), _size_on_disk(weights_file(folder, component)))
        for component, model in build_models(config).items()
    ]
    return [
        f"model: {folder}",
        _summary(config),
        f"storage dtype: {config.dtype}",
        f"source: {source.name or 'unknown'}, sha256 {source.sha256 or 'unknown'}"
        + (f" (Model hash {model_hash(source.sha256)})" if source.sha256 else ""),
    ] + _table(rows, "on disk")
