"""Train the bundled demo model from scratch: `python -m training.train_demo --output DIR --seed 0`.

Stage 1 trains the VAE on shapes pictures; stage 2 trains the text encoder and UNet together on the
VAE's latents. DIR becomes a diffusers StableDiffusionPipeline folder (safetensors) that
`mlx-sd convert DIR resources/demo` turns into our format. Same seed, same machine: same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .classify import classify
from reference.models import save_hub_layout
from mlx_sd.tokenizer import BUNDLED_FOLDER

from .demo_config import IMAGE_SIZE, NOISE_SCHEDULE, TrainingRecipe
from .shapes import samples
from .torch_models import load_tokenizer, make_pipeline
from .train_diffusion import train_diffusion
from .train_vae import encode_dataset, to_tensor, train_vae

def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def reconstruction_accuracy(vae, seed: int, start: int, count: int) -> dict[str, float]:
    """Classifier agreement with the true labels on VAE reconstructions of unseen pictures."""
    held_out = list(samples(seed, count, IMAGE_SIZE, start=start))
    images = np.stack([np.asarray(s.image) for s in held_out])
    decoded = vae.decode(vae.encode(to_tensor(images)).latent_dist.mean).sample
    pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    predictions = [classify(p) for p in pixels]
    return {
        field: sum(getattr(p, field) == getattr(s.label, field) for p, s in zip(predictions, held_out)) / count
        for field in ("shape", "colour", "background", "size", "position")
    }


def train(recipe: TrainingRecipe, output: Path, log) -> dict:
    started = time.monotonic()
    timings: dict[str, float] = {}
    data = list(samples(recipe.seed, recipe.dataset_size, IMAGE_SIZE))
    images = np.stack([np.asarray(s.image) for s in data])
    labels = [s.label for s in data]
    timings["dataset"] = time.monotonic() - started
    log(f"dataset: {len(data)} pictures in {timings['dataset']:.0f}s")

    mark = time.monotonic()
    vae, vae_losses = train_vae(recipe.vae_config, recipe.vae, images, recipe.seed, log)
    timings["vae"] = time.monotonic() - mark
    log(f"vae trained in {timings['vae']:.0f}s, load average {os.getloadavg()}")
    mark = time.monotonic()
    latent_mean, latent_std = encode_dataset(vae, images)
    # Scale so that sampled latents have unit variance, as SD's 0.18215 does for its VAE.
    scaling_factor = float(1.0 / torch.sqrt(latent_mean.var() + latent_std.pow(2).mean()))
    vae.register_to_config(scaling_factor=scaling_factor)
    recipe.vae_config = dataclasses.replace(recipe.vae_config, scaling_factor=scaling_factor)
    vae_check = reconstruction_accuracy(vae, recipe.seed, recipe.dataset_size, recipe.held_out)
    timings["encode"] = time.monotonic() - mark
    log(f"vae: scaling_factor {scaling_factor:.4f}, reconstructions classified {vae_check}")

    mark = time.monotonic()
    tokenizer = load_tokenizer(BUNDLED_FOLDER)
    text_encoder, unet, diffusion_losses = train_diffusion(
        recipe.text_encoder, recipe.unet, NOISE_SCHEDULE, recipe.diffusion, tokenizer,
        latent_mean * scaling_factor, latent_std * scaling_factor, labels, recipe.seed, log,
    )
    timings["diffusion"] = time.monotonic() - mark
    log(f"text encoder + unet trained in {timings['diffusion']:.0f}s, load average {os.getloadavg()}")
    timings["total"] = time.monotonic() - started

    save_hub_layout(make_pipeline(text_encoder, tokenizer, unet, vae, NOISE_SCHEDULE), output)
    report = {
        "recipe": dataclasses.asdict(recipe),
        "seconds": timings,
        "parameters": {
            "text_encoder": parameter_count(text_encoder), "unet": parameter_count(unet), "vae": parameter_count(vae),
        },
        "vae_reconstruction_accuracy": vae_check,
        "final_losses": {
            "vae_reconstruction": float(np.mean(vae_losses[-100:])),
            "diffusion": float(np.mean(diffusion_losses[-100:])),
        },
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg(),
    }
    (output / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"done in {timings['total']:.0f}s: {output}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="new folder for the diffusers pipeline")
    parser.add_argument("--seed", type=int, default=0)
    # Two threads run a step in 0.31 s against 0.48 s for one on an idle 2-core machine, but spin-wait
    # on each other when the cores are shared (use 1 then). The thread count fixes the float summation
    # order, so the same seed and thread count give the same weights.
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    # Overrides for experiments and smoke tests; the defaults are the shipped recipe.
    parser.add_argument("--dataset-size", type=int, default=None)
    parser.add_argument("--vae-steps", type=int, default=None)
    parser.add_argument("--diffusion-steps", type=int, default=None)
    args = parser.parse_args(argv)
    if args.output.exists():
        parser.error(f"{args.output} already exists; choose a new folder")
    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True)
    log_file = (args.output / "training_log.txt").open("w")

    def log(message: str) -> None:
        print(message, flush=True)
        print(message, file=log_file, flush=True)

    log(f"load average at start: {os.getloadavg()}")
    recipe = TrainingRecipe(seed=args.seed)
    if args.dataset_size is not None:
        recipe.dataset_size = args.dataset_size
    if args.vae_steps is not None:
        recipe.vae.steps = args.vae_steps
    if args.diffusion_steps is not None:
        recipe.diffusion.steps = args.diffusion_steps
    train(recipe, args.output, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
