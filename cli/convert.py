"""`mlx-sd convert SOURCE OUTPUT`: a checkpoint file, diffusers folder or Hugging Face repo -> a model folder."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from mlx_sd.config import FAMILIES, PREDICTION_TYPES
from mlx_sd.dtypes import DTYPES

if TYPE_CHECKING:
    from convert import ConversionProgress

_STAGES = {
    "fetch": "fetching from the Hugging Face Hub",
    "read": "reading and converting tensors",
    "write": "writing",
    "validate": "loading the result back",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint, diffusers folder or Hugging Face repo into an mlx-sd model folder",
        description="Convert SOURCE into the mlx-sd model folder OUTPUT. SOURCE is a single-file checkpoint "
        "(.safetensors; .ckpt/.pt only with --allow-pickle), a diffusers pipeline folder, or a Hugging Face "
        "repo id such as stabilityai/sdxl-turbo. The family (SD1, SD2, SDXL, refiner), inpainting and "
        "v-prediction are detected; flags override detection.",
    )
    parser.add_argument("source", help="checkpoint file, diffusers folder, or Hugging Face repo id")
    parser.add_argument("output", type=Path, help="the model folder to create (must not exist)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float16", help="storage dtype (default float16)")
    parser.add_argument("--family", choices=FAMILIES, help="the model family, when detection cannot tell")
    parser.add_argument(
        "--prediction", choices=PREDICTION_TYPES, help="the prediction type, when detection cannot tell"
    )
    parser.add_argument("--vae", type=Path, metavar="FILE", help="a VAE file replacing the checkpoint's own")
    parser.add_argument(
        "--allow-pickle", action="store_true",
        help="read .ckpt/.pt files (with torch's weights-only unpickler, which never runs code; needs torch)",
    )
    parser.add_argument("--ema", action="store_true", help="use the EMA UNet weights of a file that holds both")
    parser.add_argument("--revision", help="Hugging Face repo revision (branch, tag or commit)")
    parser.add_argument("--variant", help="diffusers weight variant to fetch or read, e.g. fp16")
    parser.add_argument("--cache-dir", type=Path, help="Hugging Face cache folder (default: huggingface_hub's)")
    parser.set_defaults(func=run)


class ProgressPrinter:
    """A line per stage on stderr; on a terminal the read stage counts up in place."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()

    def __call__(self, progress: ConversionProgress) -> None:
        label = _STAGES.get(progress.stage)
        if label is None:
            return
        if progress.stage != "read":
            if progress.done == 0:
                self.stream.write(f"{label}: {progress.message}\n")
        elif self.live:
            end = "\n" if progress.done == progress.total else ""
            self.stream.write(f"\r{label}: {progress.done}/{progress.total}{end}")
        elif progress.done == progress.total:
            self.stream.write(f"{label}: {progress.total} tensors\n")
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    from convert import ConvertOptions, convert_model  # the converter loads the engine: only when used

    options = ConvertOptions(
        dtype=args.dtype,
        family=args.family,
        prediction=args.prediction,
        vae=args.vae,
        allow_pickle=args.allow_pickle,
        prefer_ema=args.ema,
        revision=args.revision,
        variant=args.variant,
        hub_cache=args.cache_dir,
    )
    # SIGTERM (kill, a service manager, a closed session) stops like Ctrl-C: the converter's cleanup runs
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = convert_model(args.source, args.output, options, on_progress=ProgressPrinter())
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("\n".join(report.lines()))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
