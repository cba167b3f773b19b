"""4x upscale of a 512x512 image: our RRDBNet (mlx_sd.upscalers) against spandrel's on torch, in one
run, with time and peak memory of each side and their ratios.

    python -m benchmarks.upscale [--size 512] [--tile 128] [--blocks 23]

Both sides get the same random RealESRGAN_x4plus-shaped weights (written once as a .pth and read
back through convert/upscaler_file.py and spandrel's loader) and the same image. Each side runs in
its own process so that its peak RSS is its own. Needs `pip install --no-deps spandrel einops`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

# `mlx-sd upscale`'s default tile (mlx_sd.upscalers.DEFAULT_TILE), written out because the torch side
# must not import mlx_sd: its OpenBLAS binding slows torch down (see README, Benchmarks).
CLI_TILE = 128


def import_spandrel() -> types.ModuleType:
    """spandrel, importable without torchvision: it imports three names from
    torchvision.transforms.functional for LaMa and RestoreFormer only, which we never load, so a stand-in
    module with those names (which fail if ever called) is enough. torchvision itself has no CPU build for
    torch 2.13 on the registries here, and its CUDA build would replace the pinned CPU torch."""
    stand_ins: dict[str, types.ModuleType] = {}
    if "torchvision" not in sys.modules:
        def unavailable(*args: object, **kwargs: object) -> None:
            raise RuntimeError("torchvision is not installed (a stand-in for spandrel's import)")

        functional = types.ModuleType("torchvision.transforms.functional")
        functional.InterpolationMode = type("InterpolationMode", (), {})
        functional.rotate = functional.normalize = unavailable
        transforms = types.ModuleType("torchvision.transforms")
        transforms.functional = functional
        torchvision = types.ModuleType("torchvision")
        torchvision.transforms = transforms
        stand_ins = {
            "torchvision": torchvision, "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
        }
        sys.modules.update(stand_ins)
    try:
        import spandrel
    finally:
        # spandrel keeps the names it imported; left in sys.modules, the stand-in would make other
        # libraries (diffusers, transformers) believe torchvision is installed
        for name in stand_ins:
            sys.modules.pop(name, None)
    return spandrel


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _run_side(side: str, weights: Path, image_path: Path, tile: int) -> dict:
    """One side in this process: load, then one timed upscale. Returns its figures."""
    image = np.load(image_path)
    if side == "ours":
        import mlx_sd  # first: it binds OpenBLAS before mlx.core loads (mlx_sd.cpu.blas)
        import mlx.core as mx

        from convert.upscaler_file import read_upscaler
        from mlx_sd.upscalers import upscale_array

        mlx_sd.setup()

        model, found = read_upscaler(weights)
        loaded_mb = _peak_rss_mb()
        started = time.perf_counter()
        out = upscale_array(model, found.config.scale, image, tile=tile)
        seconds = time.perf_counter() - started
        extra = {"mlx_peak_mb": mx.get_peak_memory() / 2**20}
    else:
        import torch

        descriptor = import_spandrel().ModelLoader().load_from_file(weights)
        model = descriptor.model.eval()
        loaded_mb = _peak_rss_mb()
        started = time.perf_counter()
        with torch.inference_mode():
            out = model(torch.from_numpy(image).permute(2, 0, 1)[None]).permute(0, 2, 3, 1)[0].numpy()
        seconds = time.perf_counter() - started
        extra = {"threads": torch.get_num_threads()}
    np.save(image_path.with_name(f"{side}.npy"), out)
    return {"side": side, "seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "loaded_rss_mb": loaded_mb, **extra}


def _write_inputs(folder: Path, size: int, blocks: int) -> tuple[Path, Path]:
    """Random RealESRGAN_x4plus-shaped weights (as a .safetensors, so our side never loads torch) and
    a random picture."""
    import torch
    from safetensors.torch import save_file

    ESRGAN = import_spandrel().architectures.ESRGAN.ESRGAN
    torch.manual_seed(0)
    model = ESRGAN(num_blocks=blocks, scale=4)
    with torch.no_grad():
        for param in model.parameters():  # about the scale of trained weights: image-like outputs
            bound = 1 / param[0].numel() ** 0.5 if param.ndim == 4 else 0.05
            param.uniform_(-bound, bound)
    weights = folder / "x4.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    image_path = folder / "image.npy"
    np.save(image_path, np.random.default_rng(0).random((size, size, 3), dtype=np.float32))
    return weights, image_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.upscale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="input side in pixels (default 512)")
    parser.add_argument(
        "--tile", type=int, default=CLI_TILE, help=f"our tile size; 0: the whole picture (default {CLI_TILE})"
    )
    parser.add_argument("--blocks", type=int, default=23, help="RRDB blocks (default 23, RealESRGAN_x4plus)")
    parser.add_argument("--side", choices=("ours", "torch"), help=argparse.SUPPRESS)  # a child process's job
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        figures = _run_side(args.side, args.folder / "x4.safetensors", args.folder / "image.npy", args.tile)
        print(json.dumps(figures))
        return 0
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        _write_inputs(folder, args.size, args.blocks)
        results = {}
        for side in ("ours", "torch"):
            child = subprocess.run(
                [sys.executable, "-m", "benchmarks.upscale", "--side", side, "--folder", str(folder),
                 "--tile", str(args.tile)],
                capture_output=True, text=True, check=True,
            )
            results[side] = json.loads(child.stdout.strip().splitlines()[-1])
            print(json.dumps(results[side]), flush=True)
        difference = float(np.abs(np.load(folder / "ours.npy") - np.load(folder / "torch.npy")).max())
    ours, torch_side = results["ours"], results["torch"]
    print(f"{args.size}x{args.size} -> {4 * args.size}x{4 * args.size}, {args.blocks} blocks, our tile {args.tile}")
    print(f"time:     ours {ours['seconds']:.1f} s, spandrel/torch {torch_side['seconds']:.1f} s, "
          f"speed ratio (torch/ours) {torch_side['seconds'] / ours['seconds']:.2f}x")
    print(f"peak RSS: ours {ours['peak_rss_mb']:.0f} MB, spandrel/torch {torch_side['peak_rss_mb']:.0f} MB, "
          f"ratio (ours/torch) {ours['peak_rss_mb'] / torch_side['peak_rss_mb']:.2f}")
    print(f"max abs difference of the outputs: {difference:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
