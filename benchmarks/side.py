"""One side of the benchmark, in its own process so that its memory figures are its own.

    python -m benchmarks.side --side ours|ours-bf16|torch|torch-bf16 --family sd15 --size 512 --steps 20 --cache DIR

"ours-bf16" is our engine with bfloat16 products (Pipeline precision "bfloat16", CPUs with AVX512_BF16).

Reads the side's weight files once, so that both sides load from the page cache (this VM's memory
manager pages cold files out, and a load read from the disk times the disk). Then loads the cached
model (benchmarks.sd_weights) and times text encoding, one UNet step with classifier-free guidance
(batch 2), a VAE decode and an end-to-end generation, each after a warm-up, recording per phase
the peak RSS (and MLX's own counters for ours) and the load average. Prints one JSON object as its
last line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, 8k"
NEGATIVE = "blurry, low quality"
CFG = 7.0
SEED = 1
SIDES = ("ours", "ours-bf16", "torch", "torch-bf16")


# ---------------------------------------------------------------------------------------------
# Memory and timing


def rss_peak_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def reset_rss_peak() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


@dataclass
class Phase:
    seconds: list[float] = field(default_factory=list)
    rss_peak_mb: float = 0.0
    mlx_peak_mb: float | None = None
    load_average: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "median_s": statistics.median(self.seconds) if self.seconds else None,
            "rss_peak_mb": round(self.rss_peak_mb),
            "mlx_peak_mb": None if self.mlx_peak_mb is None else round(self.mlx_peak_mb),
            "load_average": round(self.load_average, 2),
        }


class Backend:
    """What a side must provide; every call returns only after its work is done."""

    name: str

    def load(self, cached) -> None: ...
    def encode_text(self) -> None: ...
    def unet_step(self) -> None: ...
    def vae_decode(self) -> None: ...
    def generate(self, steps: int) -> None: ...
    def reset_counters(self) -> None: ...
    def mlx_peak_mb(self) -> float | None:
        return None


def run_phase(backend: Backend, fn: Callable[[], None], runs: int, warmup: bool = True) -> Phase:
    phase = Phase()
    if warmup:
        fn()
    backend.reset_counters()
    reset_rss_peak()
    loads = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        phase.seconds.append(time.perf_counter() - started)
        loads.append(os.getloadavg()[0])
    phase.rss_peak_mb = rss_peak_mb()
    phase.mlx_peak_mb = backend.mlx_peak_mb()
    phase.load_average = statistics.mean(loads)
    return phase


def read_into_page_cache(folder: Path) -> None:
    """Read every file under `folder` once, into one reused buffer."""
    buffer = bytearray(16 << 20)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with path.open("rb", buffering=0) as file:
            while file.readinto(buffer):
                pass


# ---------------------------------------------------------------------------------------------
# Ours


class Ours(Backend):
    def __init__(self, size: int, precision: str):
        import mlx_sd  # first: binds OpenBLAS before mlx.core
        import mlx.core as mx

        mlx_sd.setup()

        self.mx = mx
        self.size = size
        self.precision = precision
        self.name = "ours" if precision == "float32" else "ours-bf16"

    def load(self, cached) -> None:
        from mlx_sd.pipeline import Pipeline

        self.pipe = Pipeline.load(cached.mlx, precision=self.precision)
        if self.pipe.cpu is not None:
            self.pipe.cpu.products = self.precision  # what Pipeline.generate applies
        mx, config = self.mx, self.pipe.config
        rng = np.random.default_rng(0)
        latent = self.size // config.vae.downscale
        self.encoders = [e for e in (self.pipe.text_encoder, self.pipe.text_encoder_2) if e is not None]
        tokenizer = self.pipe.tokenizer or self.pipe.tokenizer_2
        self.ids = mx.array([tokenizer(PROMPT), tokenizer(NEGATIVE)], dtype=mx.int32)
        self.sample = mx.array(rng.standard_normal((2, latent, latent, 4), dtype=np.float32))
        self.timestep = mx.array([500.0, 500.0])
        self.context = mx.array(rng.standard_normal((2, 77, config.unet.context_dim), dtype=np.float32))
        self.extras = {}
        if config.unet.addition_embed_type == "text_time":
            pooled = config.unet.projection_class_embeddings_input_dim - 6 * config.unet.addition_time_embed_dim
            self.extras = {
                "text_embeds": mx.array(rng.standard_normal((2, pooled), dtype=np.float32)),
                "time_ids": mx.array([[self.size, self.size, 0, 0, self.size, self.size]] * 2, dtype=mx.float32),
            }
        self.latents = mx.array(rng.standard_normal((1, latent, latent, 4), dtype=np.float32))

    def encode_text(self) -> None:
        outputs = [encoder.encode(self.ids) for encoder in self.encoders]
        self.mx.eval([(o.hidden, o.pooled) if o.pooled is not None else o.hidden for o in outputs])

    def unet_step(self) -> None:
        self.mx.eval(self.pipe.unet(self.sample, self.timestep, self.context, **self.extras))

    def vae_decode(self) -> None:
        self.mx.eval(self.pipe.vae.decode(self.latents))

    def generate(self, steps: int) -> None:
        from mlx_sd.request import GenerationRequest

        request = GenerationRequest(
            prompt=PROMPT, negative_prompt=NEGATIVE, width=self.size, height=self.size, steps=steps,
            cfg_scale=CFG, sampler="Euler", seed=SEED,
        )
        self.pipe.generate(request)

    def reset_counters(self) -> None:
        self.mx.reset_peak_memory()

    def mlx_peak_mb(self) -> float:
        return self.mx.get_peak_memory() / 2**20


# ---------------------------------------------------------------------------------------------
# The torch reference (diffusers)


class Torch(Backend):
    def __init__(self, size: int, dtype: str):
        import torch  # and nothing of mlx_sd, whose OpenBLAS binding would change torch's figures

        self.torch = torch
        self.size = size
        self.dtype = getattr(torch, dtype)  # "float32" or "bfloat16"
        self.name = "torch" if dtype == "float32" else "torch-bf16"

    def load(self, cached) -> None:
        import diffusers

        torch = self.torch
        index = json.loads((cached.diffusers / "model_index.json").read_text())
        pipeline_cls = getattr(diffusers, index["_class_name"])
        self.pipe = pipeline_cls.from_pretrained(str(cached.diffusers), torch_dtype=self.dtype, local_files_only=True)
        self.pipe.set_progress_bar_config(disable=True)
        unet, tokenizer = self.pipe.unet, self.pipe.tokenizer
        rng = np.random.default_rng(0)
        latent = self.size // 8

        def tensor(shape):
            return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).to(self.dtype)

        self.encoders = [e for e in (self.pipe.text_encoder, getattr(self.pipe, "text_encoder_2", None)) if e is not None]
        self.ids = tokenizer([PROMPT, NEGATIVE], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        self.sample = tensor((2, 4, latent, latent))
        self.timestep = torch.tensor([500.0, 500.0])
        self.context = tensor((2, 77, unet.config.cross_attention_dim))
        self.added = None
        if unet.config.addition_embed_type == "text_time":
            pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
            self.added = {
                "text_embeds": tensor((2, pooled)),
                "time_ids": torch.tensor([[self.size, self.size, 0, 0, self.size, self.size]] * 2, dtype=self.dtype),
            }
        self.latents = tensor((1, 4, latent, latent))

    def encode_text(self) -> None:
        with self.torch.inference_mode():
            for encoder in self.encoders:
                encoder(self.ids, output_hidden_states=True)

    def unet_step(self) -> None:
        with self.torch.inference_mode():
            self.pipe.unet(self.sample, self.timestep, self.context, added_cond_kwargs=self.added)

    def vae_decode(self) -> None:
        with self.torch.inference_mode():
            self.pipe.vae.decode(self.latents)

    def generate(self, steps: int) -> None:
        generator = self.torch.Generator().manual_seed(SEED)
        with self.torch.inference_mode():
            self.pipe(
                prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=CFG,
                height=self.size, width=self.size, generator=generator,
            )

    def reset_counters(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------


def backend_for(side: str, size: int) -> Backend:
    if side == "ours":
        return Ours(size, "float32")
    if side == "ours-bf16":
        return Ours(size, "bfloat16")
    if side == "torch":
        return Torch(size, "float32")
    if side == "torch-bf16":
        return Torch(size, "bfloat16")
    raise ValueError(f"unknown side {side!r}; expected one of {', '.join(SIDES)}")


def measure(side: str, family: str, size: int, steps: int, runs: int, cache: Path) -> dict[str, Any]:
    from .sd_weights import locate

    cached = locate(family, cache)
    if not (cached.diffusers / "model_index.json").is_file() or not (cached.mlx / "model.json").is_file():
        raise SystemExit(f"no cached {family} model in {cache}: run benchmarks.run, which builds it first")
    backend = backend_for(side, size)
    read_into_page_cache(cached.mlx if isinstance(backend, Ours) else cached.diffusers)
    reset_rss_peak()
    load = run_phase(backend, lambda: backend.load(cached), 1, warmup=False)
    phases = {"load": load}
    phases["text"] = run_phase(backend, backend.encode_text, runs)
    phases["unet"] = run_phase(backend, backend.unet_step, runs)
    phases["vae"] = run_phase(backend, backend.vae_decode, runs)
    if steps > 0:
        phases["e2e"] = run_phase(backend, lambda: backend.generate(steps), 1, warmup=False)
    return {"side": side, "phases": {name: phase.summary() for name, phase in phases.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=SIDES, required=True)
    parser.add_argument("--family", required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--cache", type=Path, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.side, args.family, args.size, args.steps, args.runs, args.cache)))


if __name__ == "__main__":
    main()
