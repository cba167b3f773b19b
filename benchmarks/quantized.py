"""Quantized Linear layers against float32: speed, memory and image difference.

    python -m benchmarks.quantized --family sd15 --size 512 --steps 20 --bits 8 4 [--cache DIR]

For float32 and each bit width, in a process of its own: load our converted model (the random
full-size weights of benchmarks.sd_weights), quantize the Linear layers of the UNet and the text
encoders (mlx_sd.quantize), then time one UNet step with classifier-free guidance (batch 2, after a
warm-up), generate one image (Euler, fixed seed) and record the weights' memory, MLX's peak and the
peak RSS. The image of each bit width is compared with the float32 one by PSNR on 8-bit RGB.
Random weights give noise-like images, so the PSNR measures numerical drift, not perceived quality.
Prints a table and, as its last line, a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .sd_weights import DEFAULT_CACHE, FAMILIES, prepare

PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, 8k"
NEGATIVE = "blurry, low quality"


def measure(family: str, size: int, steps: int, bits: int, cache: Path, image_path: Path) -> dict[str, Any]:
    """One configuration (bits 32 = unquantized), in this process."""
    import mlx_sd  # first: binds OpenBLAS before mlx.core
    import mlx.core as mx

    mlx_sd.setup()

    from mlx_sd.pipeline import Pipeline
    from mlx_sd.quantize import quantize
    from mlx_sd.request import GenerationRequest

    from .side import reset_rss_peak, rss_peak_mb
    from .sd_weights import locate

    pipe = Pipeline.load(locate(family, cache).mlx)
    layers = 0
    if bits != 32:
        for model in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
            if model is not None:
                layers += quantize(model, bits)
    mx.clear_cache()
    weights_mb = mx.get_active_memory() / 2**20

    rng = np.random.default_rng(0)
    latent = size // pipe.config.vae.downscale
    sample = mx.array(rng.standard_normal((2, latent, latent, 4), dtype=np.float32))
    context = mx.array(rng.standard_normal((2, 77, pipe.config.unet.context_dim), dtype=np.float32))
    extras = {}
    if pipe.config.unet.addition_embed_type == "text_time":
        unet = pipe.config.unet
        pooled = unet.projection_class_embeddings_input_dim - 6 * unet.addition_time_embed_dim
        extras = {
            "text_embeds": mx.array(rng.standard_normal((2, pooled), dtype=np.float32)),
            "time_ids": mx.array([[size, size, 0, 0, size, size]] * 2, dtype=mx.float32),
        }
    step = lambda: mx.eval(pipe.unet(sample, mx.array([500.0, 500.0]), context, **extras))  # noqa: E731
    step()
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        step()
        timings.append(time.perf_counter() - started)

    mx.reset_peak_memory()
    reset_rss_peak()
    request = GenerationRequest(
        prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=steps, sampler="Euler", seed=1
    )
    started = time.perf_counter()
    image = pipe.generate(request).images[0]
    generate_s = time.perf_counter() - started
    image.save(image_path)
    return {
        "bits": bits, "quantized_layers": layers, "unet_step_s": min(timings), "generate_s": generate_s,
        "weights_mb": round(weights_mb), "mlx_peak_mb": round(mx.get_peak_memory() / 2**20),
        "rss_peak_mb": round(rss_peak_mb()), "load_average": round(os.getloadavg()[0], 2),
    }


def psnr(a: Path, b: Path) -> float:
    from PIL import Image

    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.float64)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.float64)
    mse = np.mean((x - y) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=tuple(FAMILIES), default="sd15")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one width here
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.family, args.size, args.steps, args.one, args.cache, args.image)))
        return

    prepare(args.family, args.cache, log=lambda message: print(message, file=sys.stderr))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for bits in [32, *args.bits]:
            image = Path(scratch) / f"{bits}.png"
            command = [
                sys.executable, "-m", "benchmarks.quantized", "--family", args.family, "--size", str(args.size),
                "--steps", str(args.steps), "--cache", str(args.cache), "--one", str(bits), "--image", str(image),
            ]
            print(f"{bits} bits ...", file=sys.stderr, flush=True)
            done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
            if done.returncode != 0:
                raise SystemExit(f"{bits} bits failed:\n{done.stderr[-4000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["psnr_db"] = None if bits == 32 else round(psnr(Path(scratch) / "32.png", image), 2)
            rows.append(row)

    print(f"{args.family} at {args.size}x{args.size}, {args.steps} steps")
    print(f"{'weights':>8}{'layers':>8}{'UNet step':>11}{'generate':>10}{'weights MB':>12}{'MLX peak':>10}{'RSS peak':>10}{'PSNR dB':>9}")
    for r in rows:
        label = "float32" if r["bits"] == 32 else f"{r['bits']}-bit"
        psnr_text = "-" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}"
        print(
            f"{label:>8}{r['quantized_layers']:>8}{r['unet_step_s']:>10.2f}s{r['generate_s']:>9.1f}s"
            f"{r['weights_mb']:>12}{r['mlx_peak_mb']:>10}{r['rss_peak_mb']:>10}{psnr_text:>9}"
        )
    print(json.dumps({"family": args.family, "size": args.size, "steps": args.steps, "rows": rows}))


if __name__ == "__main__":
    main()
