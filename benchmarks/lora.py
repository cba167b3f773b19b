"""How long LoRAs take to merge at full size: `python -m benchmarks.lora --family sd15|sdxl [--rank 32]`.

Builds the family's UNet and text encoders with random float16 weights (no checkpoint needed), writes a
random kohya LoRA of the given rank on every attention linear and every convolution (LoCon) and on the
text encoders' linears, then times: read + apply, switch to a second LoRA of the same shape, and remove;
with the kernel's CPU time and page faults of each (the merged weights are new memory); and one UNet
step (float16, a small latent) with the LoRA merged against without, interleaved, best of
`--repeats` each (merged weights keep the dtype, shape and layout, so the ratio should be 1).
Then the reference on the same LoRA file: diffusers' `load_lora_weights` + `fuse_lora` on its own
randomly initialised float16 models of the same architecture (reference.models), with the ratios of our
apply to theirs. Reports our peak RSS (before the reference's models exist). Prints a table and, as
its last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import mlx_sd  # first: it binds OpenBLAS before mlx.core loads (mlx_sd.cpu.blas)
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from safetensors.numpy import save_file

from mlx_sd.config import preset
from mlx_sd.cpu.lora_merge import merging_for
from mlx_sd.cpu.options import CpuOptions
from mlx_sd.device import current_device
from mlx_sd.lora import LoraMerger, LoraUse, read_lora
from mlx_sd.pipeline import build_models

PRESET = {"sd15": "sd15", "sdxl": "sdxl"}
KOHYA = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}


def _targets(models: dict, family: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """(component, module path, torch-layout weight shape) of every layer the LoRA changes."""
    targets = []
    for component, model in models.items():
        for name, array in tree_flatten(model.parameters()):
            if not name.endswith(".weight") or array.ndim not in (2, 4) or "embedding" in name:
                continue
            if component == "unet" and array.ndim == 2 and "attn" not in name and "proj" not in name:
                continue
            shape = (array.shape[0], array.shape[3], array.shape[1], array.shape[2]) if array.ndim == 4 else array.shape
            targets.append((component, name.removesuffix(".weight"), tuple(shape)))
    return targets


def write_lora(path: Path, targets, rank: int, seed: int, family: str) -> None:
    rng = np.random.default_rng(seed)
    tensors = {}
    for component, module, shape in targets:
        prefix = "lora_te_" if component == "text_encoder" and family == "sd15" else KOHYA[component]
        key = prefix + module.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = (rng.standard_normal((rank, *shape[1:]), dtype=np.float32) * 0.01).astype(np.float16)
        up_shape = (shape[0], rank, 1, 1) if len(shape) == 4 else (shape[0], rank)
        tensors[f"{key}.lora_up.weight"] = (rng.standard_normal(up_shape, dtype=np.float32) * 0.01).astype(np.float16)
        tensors[f"{key}.alpha"] = np.array(rank / 2, dtype=np.float16)
    save_file(tensors, str(path))


def _timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _timed_with_faults(action) -> tuple[float, float, int]:
    """Seconds of `action`, the CPU seconds the kernel spent on it (mostly page faults of the merged
    weights' new memory: on a VM whose memory was never touched since it booted these dominate) and
    its page faults."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = _timed(action)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return seconds, after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt


def unet_step(models: dict, config, latent: int) -> float:
    """Seconds for one UNet call on a (1, latent, latent, 4) float16 sample."""
    unet = models["unet"]
    context_width = config.unet.cross_attention_dim
    sample = mx.zeros((1, latent, latent, config.unet.in_channels), dtype=mx.float16)
    context = mx.zeros((1, 77, context_width), dtype=mx.float16)
    extra = {}
    if config.unet.addition_embed_type == "text_time":
        extra = {"text_embeds": mx.zeros((1, 1280), dtype=mx.float16), "time_ids": mx.zeros((1, 6), dtype=mx.float16)}
    return _timed(lambda: mx.eval(unet(sample, mx.array([500.0]), context, **extra)))


def diffusers_fuse(config, path: Path) -> dict[str, float | int]:
    """Seconds for diffusers' load_lora_weights and fuse_lora of the LoRA at `path` on float16 models of
    `config`'s architecture (randomly initialised: the time does not depend on the values), and how many
    layers it fused."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from reference.models import text_encoder, unet

    torch.set_default_dtype(torch.float16)  # initialised in float16: no float32 copy of the UNet
    try:
        parts = {"unet": unet(config.unet), "text_encoder": text_encoder(config.text_encoder)}
        if config.text_encoder_2 is not None:
            parts["text_encoder_2"] = text_encoder(config.text_encoder_2)
    finally:
        torch.set_default_dtype(torch.float32)
    if "text_encoder_2" in parts:
        pipe = StableDiffusionXLPipeline(vae=None, tokenizer=None, tokenizer_2=None, scheduler=None, **parts)
    else:
        pipe = StableDiffusionPipeline(vae=None, tokenizer=None, scheduler=None, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False, **parts)  # fmt: skip
    figures: dict[str, float | int] = {"diffusers_load_s": _timed(lambda: pipe.load_lora_weights(str(path)))}
    figures["diffusers_layers"] = sum(1 for model in parts.values() for name, _ in model.named_modules()
                                      if name.endswith(".lora_A"))  # fmt: skip
    figures["diffusers_fuse_s"] = _timed(lambda: pipe.fuse_lora(components=list(parts)))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(PRESET), default="sd15")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--step-latent", type=int, default=16, metavar="N", help="latent side of the timed UNet step")
    parser.add_argument("--repeats", type=int, default=2, help="UNet steps timed with and without the LoRA")
    args = parser.parse_args()
    mlx_sd.setup()
    config = preset(PRESET[args.family])
    models = {name: model for name, model in build_models(config).items() if name != "vae"}
    for model in models.values():
        model.set_dtype(mx.float16)
        mx.eval(model.parameters())
    targets = _targets(models, args.family)
    figures: dict[str, float | int | str] = {"family": args.family, "rank": args.rank, "layers": len(targets)}
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"lora{i}.safetensors" for i in range(2)]
        for seed, path in enumerate(paths):
            write_lora(path, targets, args.rank, seed, args.family)
        figures["file_mb"] = round(paths[0].stat().st_size / 2**20, 1)
        # as Pipeline.use_resources merges: with the compiled kernel on the CPU
        merging = merging_for(CpuOptions.for_this_machine() if current_device() == "cpu" else None)
        merger = LoraMerger(models, config.family, config.unet.layers_per_block, merging)
        for name, path in (("apply", paths[0]), ("switch", paths[1])):
            seconds, system, faults = _timed_with_faults(lambda: merger.apply([LoraUse(read_lora(path))]))
            figures.update({f"{name}_s": seconds, f"{name}_system_s": system, f"{name}_page_faults": faults})
        unet_step(models, config, args.step_latent)  # warm-up
        merged, plain = [], []
        for _ in range(args.repeats):  # interleaved: the machine's load changes alike for both
            merged.append(unet_step(models, config, args.step_latent))
            figures["remove_s"] = _timed(merger.remove_all)
            plain.append(unet_step(models, config, args.step_latent))
            merger.apply([LoraUse(read_lora(paths[1]))])
        merger.remove_all()
        figures["step_lora_s"], figures["step_plain_s"] = min(merged), min(plain)
        figures["step_ratio"] = min(merged) / min(plain)
        del merger, models  # before the reference's models
        figures["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # ours
        figures.update(diffusers_fuse(config, paths[0]))
    reference_s = figures["diffusers_load_s"] + figures["diffusers_fuse_s"]
    figures["apply_vs_diffusers"] = figures["apply_s"] / reference_s
    figures["switch_vs_diffusers"] = figures["switch_s"] / reference_s
    for key, value in figures.items():
        print(f"{key:>20}  {value:.2f}" if isinstance(value, float) else f"{key:>20}  {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
