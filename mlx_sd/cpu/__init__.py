"""Everything mlx-sd does only on the CPU, in one package, swapped into plain models at load.

The models (mlx_sd.unet, clip, vae) are written as they run on Metal. When a pipeline is loaded for
the CPU, `accelerate` replaces their layers with equivalents built for mlx's CPU backend (compiled
GEMM, Winograd, fused GroupNorm+SiLU, the attention kernel, half-precision weights converted as they
are packed), the way `mlx.nn.quantize` replaces Linear with QuantizedLinear. Process-wide memory
settings are `memory.keep_freed_memory`, applied by mlx_sd.runtime.setup. The GPU path uses none of it.
`blas` binds OpenBLAS before mlx.core loads; mlx_sd/__init__.py imports it, first of all.
"""
