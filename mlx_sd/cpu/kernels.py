"""mlx-sd's C++ kernels for mlx's CPU backend, compiled on first use and cached.

mlx offers custom kernels for Metal and CUDA but not for its CPU backend, where attention costs
several single-threaded passes over scores that fit no cache. `csrc/fused_attention.cpp` adds an mlx
primitive that runs it as one cache-blocked kernel; `csrc/group_norm.cpp` does GroupNorm+SiLU in two
vectorised passes (mlx's fused form takes five); `csrc/gemm.cpp` is a float32 GEMM for the CPU's
full vector width, where the system BLAS may be pinned to a narrower one, blocked for this CPU's
caches, with bfloat16 products on CPUs with AVX512_BF16; `csrc/lora_merge.cpp` merges a LoRA into a
weight in one pass (mlx_sd.cpu.lora_merge); `csrc/mapped_weights.cpp` makes arrays on a
mapped weight file (mlx_sd.mapped_weights). Their speeds are in docs/performance.md. They
are compiled against the installed mlx, as mlx's own `mx.compile` compiles its CPU kernels, with
the system C++ compiler and the nanobind that mlx's Python bindings use, and cached per source,
mlx, nanobind, Python and CPU. If anything is missing the engine keeps its pure-mlx formulations
and `mlx-sd info` says why. Set MLX_SD_NO_CPU_KERNELS=1 to skip the kernels.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import mlx.core as mx
import numpy as np

from . import blas
from .machine import cache_sizes

DISABLE_ENV = "MLX_SD_NO_CPU_KERNELS"
MODULE_NAME = "_mlx_sd_cpu_kernels"
SOURCE_DIR = Path(__file__).parent.parent / "csrc"
BUILD_SECONDS_LIMIT = 600

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelStatus:
    module: ModuleType | None  # the loaded extension, or None
    reason: str  # one line for `mlx-sd info`


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlx-sd" / "cpu-kernels"


def _cpu_identity() -> str:
    """The CPU's model and flags: the library is compiled with -march=native."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags", "Features"))}))


def sources() -> list[Path]:
    """The C++ files compiled into the extension (headers included for the cache key)."""
    return sorted(SOURCE_DIR.glob("*.cpp")) + sorted(SOURCE_DIR.glob("*.h"))


def _build_key(nanobind_version: str) -> str:
    parts = [*(path.read_bytes() for path in sources()), mx.__version__, nanobind_version, sys.version,
             platform.machine(), _cpu_identity(), *_cache_defines()]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def _compile_command(compiler: str, output: Path) -> list[str]:
    import nanobind

    mlx_dir = Path(mx.__file__).parent
    nanobind_dir = Path(nanobind.__file__).parent
    return [
        compiler, "-O3", "-march=native", "-std=c++20", "-shared", "-fPIC", "-fvisibility=hidden",
        "-fno-strict-aliasing", "-DNB_DOMAIN=mlx", "-DNB_COMPACT_ASSERTIONS",
        f"-I{sysconfig.get_paths()['include']}", f"-I{nanobind_dir / 'include'}",
        f"-I{nanobind_dir / 'ext' / 'robin_map' / 'include'}", f"-I{mlx_dir / 'include'}", f"-I{SOURCE_DIR}",
        str(nanobind_dir / "src" / "nb_combined.cpp"), *(str(path) for path in sources() if path.suffix == ".cpp"),
        f"-L{mlx_dir / 'lib'}", "-lmlx", f"-Wl,-rpath,{mlx_dir / 'lib'}", "-o", str(output),
        *_cache_defines(),
    ]  # fmt: skip


def _cache_defines() -> list[str]:
    """The GEMM's blocking follows this machine's caches (csrc/gemm.cpp)."""
    caches = cache_sizes()
    return [f"-DMLX_SD_L2_BYTES={caches.l2}", f"-DMLX_SD_L3_BYTES={caches.l3}"]


def _build(library: Path, compiler: str) -> None:
    """Compile the extension into `library`, atomically (another process may be loading it)."""
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        partial = Path(scratch) / library.name
        log.info("compiling mlx-sd's CPU kernels (once, about 10 s) into %s", library.parent)
        result = subprocess.run(
            _compile_command(compiler, partial), capture_output=True, text=True, timeout=BUILD_SECONDS_LIMIT
        )
        if result.returncode != 0:
            tail = " ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise RuntimeError(f"{compiler} failed: {tail[-400:]}")
        os.replace(partial, library)


def _import(library: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(MODULE_NAME, str(library))
    spec = importlib.util.spec_from_file_location(MODULE_NAME, library, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _check(module: ModuleType) -> None:
    """The kernels against mlx's attention and matmul on small odd-sized cases: a build against a
    mismatched mlx or nanobind fails here (nanobind cannot convert mx.array), not mid-generation."""
    rng = np.random.default_rng(0)
    q, k, v = (mx.array(rng.standard_normal((3, tokens, 13), dtype=np.float32)) for tokens in (21, 37, 37))
    scale = 13**-0.5
    weights = mx.softmax((q * scale) @ k.swapaxes(-1, -2), axis=-1, precise=True)
    with mx.stream(mx.cpu):
        error = mx.abs(module.fused_attention(q, k, v, scale, 2) - weights @ v).max().item()
    if not error < 1e-4:
        raise RuntimeError(f"the compiled kernel is {error:.2g} away from mlx's attention")
    a, b = (mx.array(rng.standard_normal(shape, dtype=np.float32)) for shape in ((2, 29, 19), (23, 19)))
    with mx.stream(mx.cpu):
        error = mx.abs(module.gemm(a, b.T, None, 2) - a @ b.T).max().item()
    if not error < 1e-4:
        raise RuntimeError(f"the compiled GEMM is {error:.2g} away from mlx's matmul")


def load(compiler: str | None = None, directory: Path | None = None) -> KernelStatus:
    """Build (once per cache key) and import the extension; never raises."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return KernelStatus(None, f"disabled by {DISABLE_ENV}: mlx ops are used instead")
    compiler = compiler or os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        return KernelStatus(None, f"no C++ compiler ({compiler}) found: install g++ for about 3.5x faster CPU attention")
    try:
        import nanobind
    except ImportError:
        return KernelStatus(None, "nanobind is not installed (pip install nanobind): mlx ops are used instead")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return KernelStatus(None, "Python's C headers are missing (install python3-dev): mlx ops are used instead")
    library = (directory or cache_dir()) / f"{MODULE_NAME}-{_build_key(nanobind.__version__)}.so"
    try:
        library.parent.mkdir(parents=True, exist_ok=True)
        with open(library.parent / ".lock", "w") as lock:  # one build at a time across processes
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not library.exists():
                _build(library, compiler)
        module = _import(library)
        _check(module)
    except Exception as error:  # noqa: BLE001 - any failure leaves the pure-mlx path in place
        return KernelStatus(None, f"not used ({error}); mlx ops are used instead")
    return KernelStatus(module, f"fused attention, GroupNorm and GEMM compiled in {library}")


@functools.cache
def status() -> KernelStatus:
    """The kernels of this process, built or loaded on first call. With them OpenBLAS keeps one
    thread (mlx_sd.cpu.blas.use_one_thread): its idle workers would spin against the kernels' threads."""
    loaded = load()
    if loaded.module is not None:
        blas.use_one_thread()
    return loaded


def available() -> bool:
    return status().module is not None


def _module() -> ModuleType:
    module = status().module
    if module is None:
        raise RuntimeError(f"mlx-sd's CPU kernels are unavailable: {status().reason}")
    return module


def fused_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, threads: int) -> mx.array:
    """softmax(q k^T * scale) v on float32 (pairs, tokens, dim) arrays, on the current CPU stream."""
    return _module().fused_attention(q, k, v, scale, threads)


def cpu_has_bf16() -> bool:
    """Whether the CPU has AVX512_BF16, from its flags alone (no build): what bf16_products needs besides the kernels."""
    return "avx512_bf16" in _cpu_identity().split()


def bf16_products() -> bool:
    """Whether the kernels were built for a CPU with AVX512_BF16: `gemm` and `conv_taps` can then
    multiply bfloat16-rounded factors, accumulating in float32, at twice the float32 rate."""
    return available() and _module().bf16_products()


def gemm(a: mx.array, b: mx.array, bias: mx.array | None = None, threads: int = 1, bf16: bool = False) -> mx.array:
    """bias + a @ b in float32 for a (batch, rows, in) with its channels contiguous and b (in, out) with
    any strides (a transposed weight is read in place), on the current CPU stream; with `bf16`, of
    a and b rounded to bfloat16 (bf16_products)."""
    return _module().gemm(a, b, bias, threads, bf16)


def conv_taps(
    x: mx.array, b: mx.array, bias: mx.array | None, taps: list[tuple[int, int]], threads: int = 1, bf16: bool = False
) -> mx.array:
    """bias + the sum over taps t = (dy, dx) of x shifted by (dy, dx), zeros outside the image, @
    b[t in : (t + 1) in]: a stride-1 convolution of x (batch, height, width, in) in float32, without a
    patch buffer or a padded copy, on the current CPU stream; with `bf16`, as `gemm`."""
    return _module().conv_taps(x, b, bias, taps, threads, bf16)


def group_norm(x: mx.array, weight: mx.array, bias: mx.array, groups: int, eps: float, silu: bool) -> mx.array:
    """GroupNorm of a float32 (batch, rows, channels) array with its affine, then SiLU if `silu`."""
    return _module().group_norm(x, weight, bias, groups, eps, silu)


def lora_merge(
    base: mx.array, delta: mx.array | None, up: mx.array | None, down: mx.array | None, threads: int = 1
) -> mx.array:
    """(base in float32 + delta + up @ down) in base's dtype, for a float16 or float32 base (rows, cols),
    delta (rows, cols), up (rows, rank) and down (rank, cols), on the current CPU stream; the float16
    result is astype's, bit for bit."""
    return _module().lora_merge(base, delta, up, down, threads)


def geglu(x: mx.array, p: tuple[float, ...], q: tuple[float, ...], limit: float, threads: int = 1) -> mx.array:
    """value * gelu(gate) of a float32 (rows, 2 x channels) x, value and gate its halves, gelu as
    mlx_sd.cpu.elementwise's rational (numerator p, denominator q, zero bump from `limit`)."""
    return _module().geglu(x, list(p), list(q), limit, threads)


def layer_norm(x: mx.array, weight: mx.array, bias: mx.array, eps: float, threads: int = 1) -> mx.array:
    """LayerNorm of each row of a float32 (rows, channels) array with its affine, on `threads` threads."""
    return _module().layer_norm(x, weight, bias, eps, threads)
