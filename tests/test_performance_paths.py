"""Every CPU formulation (mlx_sd.cpu, swapped into plain models at load) gives the same results as
the plain module it replaces, at float32 tolerance.

The CPU's modules use formulations chosen for speed (a compiled attention kernel, or chunked
attention with a polynomial exp2, polynomial SiLU/GELU, fused GroupNorm, convolutions as matmuls),
with mlx-sd's compiled kernels (KERNELS) and without them (MLX_OPS); the plain modules are what the
GPU runs. Each pair is checked against the other and against a float64 or torch reference. Nothing
here is timed (speed is measured by `python -m benchmarks.run`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlx_sd
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
import numpy as np
import pytest
import torch
from scipy.special import erf

from mlx_sd import device, layers
from mlx_sd.block_evaluation import Boundary, evaluate_blocks
from mlx_sd.config import UNetConfig, VAEConfig
from mlx_sd.cpu import convolution, elementwise
from mlx_sd.cpu import memory as cpu_memory
from mlx_sd.cpu.accelerate import accelerate
from mlx_sd.cpu.machine import thread_count
from mlx_sd.cpu.modules import CpuAttention, CpuConv2d, CpuUpsample2D, StreamSplitUNet, split_batch_over_streams
from mlx_sd.cpu.options import CpuOptions
from mlx_sd.model_format import load_weights
from mlx_sd.unet import UNet2DConditionModel
from mlx_sd.vae import AutoencoderKL

KERNELS = CpuOptions(kernels=True, threads=2)  # with mlx-sd's compiled kernels
MLX_OPS = CpuOptions(kernels=False, threads=2)  # where they cannot be built
TOLERANCE = 1e-5  # between formulations on unit-scale inputs


def on_cpu(module: nn.Module, options: CpuOptions | None) -> nn.Module:
    """`module` with the CPU's formulations (None: the plain module)."""
    return module if options is None else accelerate(module, options)


def rand(*shape: int, seed: int = 0, scale: float = 1.0) -> mx.array:
    return mx.array(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * scale)


# ---------------------------------------------------------------------------------------------
# The swap


def test_accelerate_swaps_modules_for_cpu_equivalents_with_the_same_parameters():
    unet = UNet2DConditionModel(TINY_UNET)
    fast = accelerate(unet, KERNELS)
    assert type(fast.conv_in) is CpuConv2d and type(unet.conv_in) is nn.Conv2d  # the plain model is left as it was
    assert type(fast.up_blocks[0].upsamplers[0]) is CpuUpsample2D
    assert type(fast.down_blocks[0].attentions[0].transformer_blocks[0].attn1.attention) is CpuAttention
    assert fast.conv_in.weight is unet.conv_in.weight  # the same arrays, no copy
    assert [k for k, _ in tree_flatten(fast.parameters())] == [k for k, _ in tree_flatten(unet.parameters())]
    assert accelerate(fast, KERNELS).conv_in is fast.conv_in  # swapped once
    # without the kernels Linear layers stay mlx's and the UNet splits a batch over the worker streams
    slow = accelerate(unet, MLX_OPS)
    assert type(slow) is StreamSplitUNet and type(slow.time_embedding.linear_1) is nn.Linear


def test_weight_casts_at_load_spread_over_one_stream_per_core_and_give_the_same_weights(tmp_path):
    streams = device.worker_streams("cpu")
    assert len(streams) == thread_count() and len(set(streams)) == len(streams)
    assert all(stream.device == mx.cpu for stream in streams) and device.worker_streams("cpu") == streams
    # mlx streams belong to their thread: a load on another thread (the app's worker) gets its own
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(load_on_this_thread, tmp_path).result() == "loaded"
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    weights = {f"layers.{i}.{name}": rand(*shape, seed=20 + i).astype(mx.float16)
               for i, (fan_in, fan_out) in enumerate(((8, 16), (16, 4)))
               for name, shape in (("weight", (fan_out, fan_in)), ("bias", (fan_out,)))}
    path = tmp_path / "weights.safetensors"
    mx.save_safetensors(str(path), weights)
    load_weights(model, path, "test", mx.float32)
    for name, value in tree_flatten(model.parameters()):
        assert value.dtype == mx.float32 and mx.array_equal(value, weights[name].astype(mx.float32)).item()


def load_on_this_thread(tmp_path) -> str:
    layer = nn.Linear(4, 4)
    path = tmp_path / "thread.safetensors"
    mx.save_safetensors(str(path), {"weight": rand(4, 4).astype(mx.float16), "bias": rand(4).astype(mx.float16)})
    load_weights(layer, path, "test", mx.float32)
    mx.eval(layer.parameters())
    return "loaded"


def test_setup_names_the_allocator_it_sets_up():
    if device.gpu_available():
        expected = "gpu allocator"
    else:
        expected = "heap" if cpu_memory._glibc() is not None else "mlx cache"
    assert mlx_sd.setup() == expected


ALLOCATOR_REUSE = """
import json, resource, sys, threading
import mlx_sd
import mlx.core as mx
mlx_sd.setup()  # as the CLI and the app do before they generate

def fresh_pages(shape):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    mx.eval(mx.ones(shape))
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults = []
measure = lambda: faults.extend(fresh_pages((n, 1 << 20)) for n in (64, 64, 48))
if sys.argv[1] == "thread":
    worker = threading.Thread(target=measure)
    worker.start()
    worker.join()
else:
    measure()
print(json.dumps(faults))
"""


@pytest.mark.skipif(cpu_memory._glibc() is None or device.gpu_available(), reason="glibc's heap on mlx's CPU")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_the_cpu_allocator_reuses_freed_buffers_without_page_faults(where):
    """A freed 256 MiB buffer serves the next one of that size and a smaller one, without faulting
    its pages in again (glibc alone would map fresh memory; mlx's own cache only takes sizes within
    8 KB). Also on a thread of its own, as the app generates: without one shared arena, a thread's
    glibc arena serves every request above 64 MB with a fresh mmap. In a fresh process: in a long one
    the heap's best fit may be another free chunk, whose pages were never touched."""
    done = subprocess.run([sys.executable, "-c", ALLOCATOR_REUSE, where], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    first, again, smaller = json.loads(done.stdout.strip().splitlines()[-1])
    pages = (256 << 20) // 4096
    assert first > pages // 2 and again < pages // 20 and smaller < pages // 20, (first, again, smaller)


PREFAULT = """
import json, resource
import mlx_sd
import mlx.core as mx
from mlx_sd.cpu import memory as cpu_memory
mlx_sd.setup()

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

before = faults()
prefaulted = cpu_memory.prefault_heap(512 << 20)
between = faults()
mx.eval(mx.ones((96, 1 << 20)))  # 384 MiB, inside what was prefaulted
after = faults()
rollup = open("/proc/self/smaps_rollup").read()
huge_kb = int(rollup.split("AnonHugePages:")[1].split()[0])
print(json.dumps([prefaulted, between - before, after - between, huge_kb]))
"""


@pytest.mark.skipif(cpu_memory._glibc() is None or device.gpu_available(), reason="glibc's heap on mlx's CPU")
def test_prefaulted_heap_serves_the_next_buffers_without_page_faults():
    """Weights are read into memory prefaulted in 2 MB pages: the read itself takes no faults."""
    done = subprocess.run([sys.executable, "-c", PREFAULT], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    prefaulted, prefault_faults, read_faults, huge_kb = json.loads(done.stdout.strip().splitlines()[-1])
    if not cpu_memory.transparent_huge_pages():
        assert prefaulted is False  # 4 KB pages faulted ahead cost what they would have cost later
        return
    pages = (384 << 20) // 4096
    assert prefaulted is True
    assert read_faults < pages // 50, read_faults
    assert huge_kb >= 384 << 10, huge_kb  # the prefaulted memory is in 2 MB pages
    assert prefault_faults < pages // 20, prefault_faults  # a fault per 2 MB, not per 4 KB


def test_prefault_heap_does_nothing_without_glibc(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: None)
    assert cpu_memory.prefault_heap(64 << 20) is False


@pytest.mark.skipif(cpu_memory._glibc() is None, reason="malloc_trim is glibc's")
def test_release_free_memory_returns_the_heap_to_the_os():
    def rss_mb() -> float:
        return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024

    big = mx.ones((128, 1 << 20))  # 512 MiB
    mx.eval(big)
    del big
    kept = rss_mb()
    cpu_memory.release_free_memory()
    assert rss_mb() < kept - 400


def test_without_glibc_mlx_caches_freed_buffers(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: None)
    try:
        assert cpu_memory.keep_freed_memory() == "mlx cache"
        assert mx.set_cache_limit(0) == cpu_memory.FALLBACK_CACHE_BYTES
    finally:
        monkeypatch.undo()
        cpu_memory.keep_freed_memory()


# ---------------------------------------------------------------------------------------------
# Element-wise functions


def test_exp2_polynomial_is_accurate_over_the_float32_range():
    t = np.linspace(-126, 126, 400_001, dtype=np.float32)
    got = np.array(mx.compile(elementwise._exp2_in_range)(mx.array(t))).astype(np.float64)
    relative = np.abs(got / 2.0 ** t.astype(np.float64) - 1)
    assert relative.max() < 5e-7  # mx.exp itself is at 1.8e-6


ACTIVATIONS = {
    "silu": (elementwise.silu, nn.silu, lambda x: x / (1 + np.exp(-x))),
    "gelu": (elementwise.gelu, nn.gelu, lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))),
    "quick_gelu": (elementwise.quick_gelu, lambda x: x * mx.sigmoid(1.702 * x), lambda x: x / (1 + np.exp(-1.702 * x))),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_polynomial_activations_match_float64_and_mlx(name):
    fn, plain, reference = ACTIVATIONS[name]
    x = np.concatenate([
        np.linspace(-12, 12, 200_001), np.linspace(-200, 200, 20_001), [0.0, -1e-30, 1e4, -1e4, 3.4e38, -3.4e38],
    ]).astype(np.float32)
    with np.errstate(over="ignore"):
        expected = reference(x.astype(np.float64))
    ours = np.array(fn(mx.array(x))).astype(np.float64)
    native = np.array(plain(mx.array(x))).astype(np.float64)
    scale = np.maximum(np.abs(expected), 1.0)
    assert np.isfinite(ours).all()
    assert (np.abs(ours - expected) / scale).max() < 1e-6
    finite = np.isfinite(native)  # mlx's gelu overflows to inf at 3.4e38, where ours stays exact
    assert (np.abs(ours - native) / scale)[finite].max() < 1e-6


def test_geglu_fused_matches_mlx():
    value, gate = rand(2, 64, 320, seed=1), rand(2, 64, 320, seed=2, scale=3.0)
    assert np.abs(np.array(elementwise.geglu(value, gate) - value * nn.gelu(gate))).max() < TOLERANCE


@pytest.mark.parametrize("weights", [mx.float32, mx.float16])
def test_layer_norm_kernel_matches_mlx(weights):
    norm = nn.LayerNorm(323)
    norm.weight, norm.bias = rand(323, seed=3).astype(weights), rand(323, seed=4).astype(weights)
    x = rand(2, 33, 323, seed=5, scale=4.0) + 3.0  # an offset mean, channels past the vector width
    fast = on_cpu(norm, KERNELS)
    assert type(fast) is not nn.LayerNorm
    assert np.abs(np.array(fast(x) - norm(x))).max() < TOLERANCE


@pytest.mark.parametrize("threads", [1, 3])
def test_geglu_kernel_matches_mlx(threads):
    # the halves of one projection, channels not a multiple of the vector width (the scalar tail too)
    projected = mx.concatenate([rand(2, 33, 323, seed=1), rand(2, 33, 323, seed=2, scale=8.0)], axis=-1)
    value, gate = mx.split(projected, 2, axis=-1)
    ours = elementwise.geglu_on_threads(projected, threads)
    assert ours.shape == (2, 33, 323)
    assert np.abs(np.array(ours - value * nn.gelu(gate))).max() < TOLERANCE
    mlx_ops = elementwise.geglu(value, gate)
    assert np.abs(np.array(ours - mlx_ops)).max() < 1e-6 * max(1.0, np.abs(np.array(mlx_ops)).max())  # the same rational


def test_half_precision_keeps_the_plain_modules():
    norm = layers.GroupNormSiLU(4, 16)
    norm.weight, norm.bias = norm.weight.astype(mx.float16), norm.bias.astype(mx.float16)
    x = rand(2, 4, 4, 16, scale=4.0).astype(mx.float16)
    got = on_cpu(norm, KERNELS)(x)
    assert got.dtype == mx.float16
    assert np.array_equal(np.array(got), np.array(norm(x)))


# ---------------------------------------------------------------------------------------------
# Attention


def attention_reference(q, k, v, heads, mask=None) -> np.ndarray:
    """float64 multi-head softmax attention on (B, N, C) arrays."""
    q, k, v = (np.array(a, dtype=np.float64) for a in (q, k, v))
    b, n, c = q.shape
    d = c // heads
    split = lambda a: a.reshape(a.shape[0], a.shape[1], heads, d).transpose(0, 2, 1, 3)
    scores = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(d)
    if mask is not None:
        scores = scores + np.array(mask, dtype=np.float64)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return (weights @ split(v)).transpose(0, 2, 1, 3).reshape(b, n, c)


CASES = {
    # (batch, queries, keys, channels, heads, chunk bytes): the chunk sizes force several query chunks
    # per head, several heads per block, or one block for everything
    "self, query chunks": (2, 300, 300, 64, 4, 4 * 300 * 64),
    "cross 77 keys, head groups": (2, 256, 77, 64, 8, 4 * 77 * 256 * 3),
    "one block": (1, 64, 64, 32, 1, 16 << 20),
    "one query row per chunk": (1, 5, 40, 16, 2, 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_attention_formulations_agree(case):
    batch, queries, keys, channels, heads, chunk = CASES[case]
    q = rand(batch, queries, channels, seed=1, scale=2.0)
    k, v = rand(batch, keys, channels, seed=2, scale=2.0), rand(batch, keys, channels, seed=3)
    expected = attention_reference(q, k, v, heads)
    plain = layers.DotProductAttention(heads)
    outputs = {
        "plain": plain(q, k, v),
        "kernel": on_cpu(plain, KERNELS)(q, k, v),
        "chunked": on_cpu(plain, CpuOptions(kernels=False, threads=2, attention_chunk_bytes=chunk))(q, k, v),
    }
    for impl, out in outputs.items():
        assert np.abs(np.array(out) - expected).max() < TOLERANCE, impl
        assert np.abs(np.array(out - outputs["plain"])).max() < TOLERANCE, impl


def test_chunked_attention_with_causal_mask_and_half_inputs():
    q, k, v = (rand(2, 77, 96, seed=s) for s in (4, 5, 6))
    mask = layers.causal_mask(77)
    expected = attention_reference(q, k, v, 6, mask)
    attention = on_cpu(layers.DotProductAttention(6), CpuOptions(kernels=False, threads=2, attention_chunk_bytes=4 * 77 * 20))
    assert np.abs(np.array(attention(q, k, v, mask)) - expected).max() < TOLERANCE
    half = attention(*(a.astype(mx.float16) for a in (q, k, v)), mask.astype(mx.float16))
    assert half.dtype == mx.float16
    assert np.abs(np.array(half.astype(mx.float32)) - expected).max() < 1e-2
    # a mask is what the compiled kernel does not take: the kernels' module falls back to chunks
    assert np.abs(np.array(on_cpu(layers.DotProductAttention(6), KERNELS)(q, k, v, mask)) - expected).max() < TOLERANCE


# ---------------------------------------------------------------------------------------------
# GroupNorm


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("shape, groups", [((2, 9, 7, 64), 32), ((1, 16, 16, 96), 32), ((2, 4, 4, 8), 4)])
def test_group_norm_formulations_match_torch(shape, groups, silu):
    norm = (layers.GroupNormSiLU if silu else layers.GroupNorm)(groups, shape[-1], eps=1e-6)
    norm.weight, norm.bias = rand(shape[-1], seed=7) + 1, rand(shape[-1], seed=8)
    x = rand(*shape, seed=9, scale=3.0) + 2.0  # an offset mean tests the centring
    reference = torch.nn.functional.group_norm(
        torch.from_numpy(np.array(x)).permute(0, 3, 1, 2), groups,
        torch.from_numpy(np.array(norm.weight)), torch.from_numpy(np.array(norm.bias)), 1e-6,
    )
    reference = (torch.nn.functional.silu(reference) if silu else reference).permute(0, 2, 3, 1).numpy()
    for options in (KERNELS, MLX_OPS, None):  # kernel, mlx fused, plain
        got = on_cpu(norm, options)(x)
        assert got.shape == x.shape and got.dtype == mx.float32
        assert np.abs(np.array(got) - reference).max() < 2e-5, options


# ---------------------------------------------------------------------------------------------
# Convolutions


def torch_conv(x: mx.array, conv: nn.Conv2d) -> np.ndarray:
    weight = torch.from_numpy(np.array(conv.weight)).permute(0, 3, 1, 2)
    bias = torch.from_numpy(np.array(conv.bias)) if "bias" in conv else None
    out = torch.nn.functional.conv2d(
        torch.from_numpy(np.array(x)).permute(0, 3, 1, 2), weight, bias, conv.stride, conv.padding
    )
    return out.permute(0, 2, 3, 1).numpy()


WINOGRAD_EVERYWHERE = {
    "WINOGRAD_MIN_CHANNELS": 1, "WINOGRAD_MIN_PIXELS": 1, "WINOGRAD_KERNEL_MIN_CHANNELS": 1, "WINOGRAD_KERNEL_MIN_PIXELS": 1,
}
IN_BANDS = {**WINOGRAD_EVERYWHERE, "winograd_band_bytes": lambda: 1}
CONVS = {
    # (in, out, kernel, stride, padding, bias, input (B, H, W), convolution constants): which path
    # each takes on the CPU; Winograd's thresholds are lowered to reach it at test sizes
    "1x1 matmul": (24, 40, 1, 1, 0, True, (2, 9, 7), {}),
    "1x1 matmul, no bias": (24, 40, 1, 1, 0, False, (1, 5, 5), {}),
    "3x3 winograd": (16, 24, 3, 1, 1, True, (2, 6, 10), WINOGRAD_EVERYWHERE),
    "3x3 winograd, no bias": (8, 12, 3, 1, 1, False, (1, 4, 2), WINOGRAD_EVERYWHERE),
    "3x3 winograd in bands": (16, 8, 3, 1, 1, True, (2, 10, 8), IN_BANDS),
    "3x3 winograd, odd height: shifted": (16, 8, 3, 1, 1, True, (1, 5, 64), WINOGRAD_EVERYWHERE),
    "3x3 shifted matmuls": (16, 24, 3, 1, 1, True, (2, 5, convolution.SHIFTED_CONV_MIN_WIDTH), {}),
    "3x3 shifted, tall and odd": (8, 12, 3, 1, 1, False, (1, 17, convolution.SHIFTED_CONV_MIN_WIDTH + 3), {}),
    "3x3 narrow, the compiled GEMM's shifted taps": (16, 24, 3, 1, 1, True, (2, 6, 10), {}),
    "3x3 narrower: the compiled GEMM's taps, mx.conv2d without": (16, 24, 3, 1, 1, True, (2, 6, 3), {}),
    "3x3 stride 2, odd height: mx.conv2d": (16, 16, 3, 2, 1, True, (1, 9, 70), WINOGRAD_EVERYWHERE),
    "3x3 stride 2, phases with stacked taps": (16, 24, 3, 2, 1, True, (2, 10, 12), {}),
    "3x3 stride 2, phases tap by tap": (40, 8, 3, 2, 1, False, (1, 4, 6), {}),
    "3x3 unpadded: mx.conv2d": (16, 16, 3, 1, 0, True, (1, 6, 70), WINOGRAD_EVERYWHERE),
}


@pytest.mark.parametrize("case", list(CONVS))
def test_conv_formulations_match_torch(case, monkeypatch):
    cin, cout, kernel, stride, padding, bias, (batch, height, width), constants = CONVS[case]
    for name, value in constants.items():
        monkeypatch.setattr(convolution, name, value)
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
    if bias:
        conv.bias = rand(cout, seed=10)
    x = rand(batch, height, width, cin, seed=11)
    reference = torch_conv(x, conv)
    outputs = {}
    for name, options in {"kernels": KERNELS, "mlx ops": MLX_OPS, "plain": None}.items():
        outputs[name] = np.array(on_cpu(conv, options)(x))
        assert outputs[name].shape == reference.shape
        assert np.abs(outputs[name] - reference).max() < 2e-5, name
    assert np.abs(outputs["kernels"] - outputs["plain"]).max() < TOLERANCE
    assert np.abs(outputs["mlx ops"] - outputs["plain"]).max() < TOLERANCE


@pytest.mark.parametrize("options", [KERNELS, MLX_OPS], ids=["compiled GEMM", "mlx matmul"])
def test_each_conv_case_takes_its_path(options, monkeypatch):
    taken = []
    for name in ("conv1x1", "conv3x3_winograd", "conv3x3_shifted", "conv3x3_stride2"):
        original = getattr(convolution, name)
        monkeypatch.setattr(convolution, name, lambda *a, name=name, original=original: taken.append(name) or original(*a))
    expected = {
        "1x1 matmul": "conv1x1", "3x3 winograd in bands": "conv3x3_winograd",
        "3x3 winograd, odd height: shifted": "conv3x3_shifted", "3x3 shifted matmuls": "conv3x3_shifted",
        "3x3 narrow, the compiled GEMM's shifted taps": "conv3x3_shifted" if options.kernels else None,
        "3x3 narrower: the compiled GEMM's taps, mx.conv2d without": "conv3x3_shifted" if options.kernels else None,
        "3x3 stride 2, odd height: mx.conv2d": None,
        "3x3 stride 2, phases with stacked taps": "conv3x3_stride2" if options.kernels else None,
        "3x3 stride 2, phases tap by tap": "conv3x3_stride2" if options.kernels else None,
    }
    for case, path in expected.items():
        cin, cout, kernel, stride, padding, bias, (batch, height, width), constants = CONVS[case]
        with monkeypatch.context() as patch:
            for name, value in constants.items():
                patch.setattr(convolution, name, value)
            taken.clear()
            conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
            on_cpu(conv, options)(rand(batch, height, width, cin))
        assert taken == ([path] if path else []), case


UPSAMPLES = {
    # (channels, bias, input (B, H, W), output size or None)
    "even": (16, True, (2, 5, 7), None),
    "no bias": (8, False, (1, 4, 4), None),
    "cropped to an odd size (the UNet's skip of an odd side)": (8, True, (1, 5, 6), (9, 11)),
}


@pytest.mark.parametrize("case", list(UPSAMPLES))
def test_upsample_conv_matches_torch_interpolate_then_conv(case, monkeypatch):
    monkeypatch.setattr(convolution, "UPSAMPLE_PHASES_MIN_PIXELS", 1)  # the phases at test sizes
    channels, bias, (batch, height, width), size = UPSAMPLES[case]
    upsample = layers.Upsample2D(channels)
    upsample.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
    if bias:
        upsample.conv.bias = rand(channels, seed=20)
    x = rand(batch, height, width, channels, seed=21)
    target = size or (2 * height, 2 * width)
    up = torch.nn.functional.interpolate(torch.from_numpy(np.array(x)).permute(0, 3, 1, 2), size=target, mode="nearest")
    reference = torch_conv(mx.array(up.permute(0, 2, 3, 1).numpy()), upsample.conv)
    for options in (KERNELS, MLX_OPS, None):
        got = np.array(on_cpu(upsample, options)(x, size))
        assert got.shape == reference.shape
        assert np.abs(got - reference).max() < 2e-5, options


def test_upsample_conv_on_the_cpu_skips_the_upsampled_image(monkeypatch):
    """Uncropped, the CPU computes the four output phases from x itself: no 4x upsampled input."""
    taken = []
    for cls in (nn.Conv2d, CpuConv2d):
        monkeypatch.setattr(cls, "__call__", lambda self, x: taken.append(x.shape) or mx.zeros((1,)))
    upsample = layers.Upsample2D(8)
    fast = on_cpu(upsample, KERNELS)
    monkeypatch.setattr(convolution, "UPSAMPLE_PHASES_MIN_PIXELS", 24)
    assert fast(rand(1, 4, 6, 8)).shape == (1, 8, 12, 8) and taken == []
    fast(rand(1, 4, 6, 8), (7, 12))  # cropped: the upsampled image, then conv
    fast(rand(1, 4, 5, 8))  # too small to gain: the upsampled image, then conv
    upsample(rand(1, 4, 6, 8))
    assert taken == [(1, 7, 12, 8), (1, 8, 10, 8), (1, 8, 12, 8)]


def test_shifted_conv_runs_without_the_patch_buffer():
    """The point of the shifted formulation: no 9x patch buffer, so far less peak memory."""
    conv = nn.Conv2d(64, 64, 3, padding=1)
    x = rand(1, 128, 128, 64, seed=12)
    mx.eval(conv.parameters(), x)
    peaks = {}
    for name, options in {"kernels": KERNELS, "mlx ops": MLX_OPS, "plain": None}.items():
        swapped = on_cpu(conv, options)
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        mx.eval(swapped(x))
        peaks[name] = mx.get_peak_memory() - base
    patches = 128 * 128 * 9 * 64 * 4
    assert peaks["plain"] > patches
    assert peaks["mlx ops"] < patches / 2
    assert peaks["kernels"] <= 128 * 128 * 64 * 4 * 1.1  # the output alone: not even a padded copy


# ---------------------------------------------------------------------------------------------
# Whole models: every CPU formulation at once against the plain model


TINY_UNET = UNetConfig(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                       attention_head_dim=4)


@pytest.mark.parametrize("constants", [{}, WINOGRAD_EVERYWHERE], ids=["default sizes", "winograd everywhere"])
def test_unet_and_vae_agree_across_paths(constants, monkeypatch):
    for name, value in constants.items():
        monkeypatch.setattr(convolution, name, value)
    unet, vae = UNet2DConditionModel(TINY_UNET), AutoencoderKL(VAEConfig(block_out_channels=(32, 32, 64, 64)))
    sample = rand(2, 8, convolution.SHIFTED_CONV_MIN_WIDTH, 4, seed=13)  # wide enough for the shifted 3x3 path
    context, latents = rand(2, 77, 32, seed=14), rand(1, 4, 10, 4, seed=15)
    outputs = []
    for options in (None, KERNELS, MLX_OPS):
        outputs.append((
            np.array(on_cpu(unet, options)(sample, mx.array([10.0, 900.0]), context)),
            np.array(on_cpu(vae, options).decode(latents)),
        ))
    (unet_plain, vae_plain), *cpu_outputs = outputs
    for unet_cpu, vae_cpu in cpu_outputs:
        assert np.abs(unet_cpu - unet_plain).max() < 1e-4
        assert np.abs(vae_cpu - vae_plain).max() < 1e-4


def test_an_image_computes_the_same_bits_alone_or_in_a_batch(monkeypatch):
    """Which formulation a layer takes depends on the image, never on the batch: an image made in a
    batch of 3 is the one its seed makes alone (the user regenerating it from its infotext). Each
    threshold sits between one 8x8 latent's size and the batch's. (Through mlx's matmul the BLAS
    picks its kernels by the number of rows, so there the last bits may differ.)"""
    options = KERNELS
    for name, value in {"UPSAMPLE_PHASES_MIN_PIXELS": 32, "WINOGRAD_MIN_CHANNELS": 1, "WINOGRAD_MIN_PIXELS": 100,
                        "WINOGRAD_KERNEL_MIN_CHANNELS": 1, "WINOGRAD_KERNEL_MIN_PIXELS": 100}.items():
        monkeypatch.setattr(convolution, name, value)
    unet = on_cpu(UNet2DConditionModel(TINY_UNET), options)  # its stride-2 8x8 -> 4x4: 16 pixels, 32 channels
    sample, context, steps = rand(3, 8, 8, 4, seed=16), rand(3, 77, 32, seed=17), mx.array([10.0, 500.0, 900.0])
    together = np.array(unet(sample, steps, context))
    for k in range(3):
        alone = np.array(unet(sample[k : k + 1], steps[k : k + 1], context[k : k + 1]))
        assert np.array_equal(alone[0], together[k]), k


def test_a_batch_is_split_over_the_worker_streams_and_gives_the_same_result():
    seen = []

    def fn(x, y, nothing):
        seen.append((x.shape[0], y.shape[0], nothing))
        return x * 2 + y

    x, y = rand(5, 3, seed=30), rand(5, 3, seed=31)
    streams = (mx.new_stream(mx.cpu), mx.new_stream(mx.cpu))
    parts = split_batch_over_streams(fn, streams, x, y, None)
    assert seen == [(2, 2, None), (3, 3, None)]  # rounded halves of 5 rows, one per stream
    assert np.array_equal(np.array(parts), np.array(x * 2 + y))
    seen.clear()
    split_batch_over_streams(fn, streams, x[:1], y[:1], None)  # one row: nothing to split
    split_batch_over_streams(fn, streams[:1], x, y, None)  # one stream
    assert seen == [(1, 1, None), (5, 5, None)]


def test_blocks_evaluate_one_by_one_and_give_the_same_result(monkeypatch):
    vae = AutoencoderKL(VAEConfig(block_out_channels=(32, 32, 64, 64)))
    latents = rand(1, 4, 4, 4, seed=32)
    evaluated = []
    real_eval = mx.eval
    monkeypatch.setattr(mx, "eval", lambda *arrays: evaluated.append(arrays[0].shape) or real_eval(*arrays))
    whole = vae.decode(latents)
    assert evaluated == []
    blocks = evaluate_blocks(on_cpu(vae, KERNELS), Boundary()).decode(latents)
    resnets = 3  # per decoder block: layers_per_block + 1
    assert evaluated == [
        (1, 4, 4, 64), (1, 16, 64), (1, 4, 4, 64), (1, 4, 4, 64),  # the mid block: resnet, attention, resnet
        *[(1, 4, 4, 64)] * resnets, (1, 8, 8, 64), *[(1, 8, 8, 64)] * resnets, (1, 16, 16, 64),
        *[(1, 16, 16, 32)] * resnets, (1, 32, 32, 32), *[(1, 32, 32, 32)] * resnets,
    ]  # then each resnet and upsampler
    assert np.abs(np.array(blocks) - np.array(whole)).max() < 1e-4
