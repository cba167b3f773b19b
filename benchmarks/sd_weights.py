"""Random full-size weights for the benchmark, cached on disk in both formats.

`prepare(family, cache)` writes, once per family, a diffusers folder with seeded unit-scale random
weights in float16 (as the hub ships them; the compute of random weights equals that of real ones)
and our converted model folder made from it by `convert_model`:

    <cache>/<family>/diffusers/   model_index.json, unet/, vae/, text_encoder(_2)/, tokenizer(_2)/, scheduler/
    <cache>/<family>/mlx/         model.json, unet.safetensors, ...

Both sides of the benchmark therefore load the same weights from disk. `locate` imports nothing of
mlx_sd: importing it binds OpenBLAS for mlx (mlx_sd.cpu.blas), and the torch
sides must run as diffusers' users run them.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE = Path("/work/bench_cache")
# benchmark family -> mlx_sd.config preset (sd21 is the 768 v-model: the compute of 2.1-base at any size)
FAMILIES = {"sd15": "sd15", "sd21": "sd21", "sdxl": "sdxl"}


@dataclass(frozen=True)
class CachedModel:
    family: str
    diffusers: Path
    mlx: Path


def prepare(family: str, cache: Path = DEFAULT_CACHE, log=print) -> CachedModel:
    """The family's cached model folders, building and converting them first when missing."""
    from mlx_sd.config import preset  # mlx_sd first: it binds OpenBLAS before anything loads mlx.core

    cached = locate(family, cache)
    diffusers_dir, mlx_dir, root = cached.diffusers, cached.mlx, cached.diffusers.parent
    if not (diffusers_dir / "model_index.json").is_file():
        from .random_diffusers import save_diffusers  # torch: only when building

        started = time.perf_counter()
        log(f"building random full-size {family} weights in {diffusers_dir} ...")
        staging = root / "diffusers.partial"
        shutil.rmtree(staging, ignore_errors=True)
        save_diffusers(preset(FAMILIES[family]), staging)
        staging.rename(diffusers_dir)
        log(f"  done in {time.perf_counter() - started:.0f} s")
    if not (mlx_dir / "model.json").is_file():
        from convert import ConvertOptions, convert_model

        started = time.perf_counter()
        log(f"converting {diffusers_dir} to {mlx_dir} ...")
        shutil.rmtree(mlx_dir, ignore_errors=True)
        convert_model(diffusers_dir, mlx_dir, ConvertOptions(dtype="float16"))
        log(f"  done in {time.perf_counter() - started:.0f} s")
    return cached


def locate(family: str, cache: Path = DEFAULT_CACHE) -> CachedModel:
    """Where the family's folders are (or will be) in `cache`; builds nothing."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    root = Path(cache) / family
    return CachedModel(family, root / "diffusers", root / "mlx")
