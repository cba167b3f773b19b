"""`mlx-sd animate`: frames that blend one prompt into another (mlx_sd.animate), saved as numbered
PNGs with their own infotext, plus an animated WebP or GIF, and an MP4 when imageio-ffmpeg is installed."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NoReturn

from PIL import Image

from cli.generate import DEFAULTS, EXIT_INTERRUPTED, ProgressBar, StopOnInterrupt
from mlx_sd.animation_files import ANIMATION_FORMATS, MP4_MISSING, save_animations
from mlx_sd.request import AND_BLENDS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "animate",
        help="animate a blend from one prompt to another",
        description="Generate frames whose prompt blends from --from to --to (and whose noise moves from "
        "--seed to --seed-to), saved as numbered PNGs with A1111's `parameters` text and as one animation. "
        "Prints the paths of the saved files, one per line.",
    )
    parser.add_argument("--model", required=True, metavar="FOLDER", help="a converted model folder, or 'demo'")
    parser.add_argument("--from", dest="from_prompt", required=True, metavar="PROMPT", help="the first frame's prompt")
    parser.add_argument("--to", dest="to_prompt", required=True, metavar="PROMPT", help="the last frame's prompt")
    parser.add_argument("--frames", type=int, default=24, metavar="N", help="frames, first and last included (default 24)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="-1 picks a random seed")
    parser.add_argument("--seed-to", type=int, metavar="SEED", help="slerp the noise from --seed's to this seed's")
    parser.add_argument(
        "--blend", choices=AND_BLENDS, default="weights",
        help="weights: composable-diffusion weights (default); embedding: interpolate the encoded prompts",
    )
    parser.add_argument("--negative", default=DEFAULTS.negative_prompt, metavar="TEXT", help="the negative prompt")
    parser.add_argument("--width", type=int, metavar="PIXELS", help="multiple of 8 (default: the model's native size)")
    parser.add_argument("--height", type=int, metavar="PIXELS", help="as --width")
    parser.add_argument("--steps", type=int, default=DEFAULTS.steps, help=f"sampling steps (default {DEFAULTS.steps})")
    parser.add_argument("--cfg", type=float, default=DEFAULTS.cfg_scale, metavar="SCALE", help="guidance scale")
    parser.add_argument("--sampler", default=DEFAULTS.sampler, metavar="NAME", help="an A1111 sampler name")
    parser.add_argument("--schedule", default=DEFAULTS.schedule, metavar="NAME", help="an A1111 schedule name")
    parser.add_argument("--fps", type=float, default=8.0, help="frames per second of the animation (default 8)")
    parser.add_argument("--format", choices=ANIMATION_FORMATS, default="webp", help="the animation's format (default webp)")
    parser.add_argument(
        "--output", type=Path, default=Path("outputs"), metavar="DIR", help="where to save (default ./outputs)"
    )

    def one_line_error(message: str) -> NoReturn:
        parser.exit(2, f"mlx-sd animate: error: {message} (see mlx-sd animate --help)\n")

    parser.error = one_line_error  # type: ignore[method-assign]
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlx_sd.animate import Animation, planned_frames, render_frames
    from mlx_sd.model_format import read_config
    from mlx_sd.model_paths import resolve_model_folder
    from mlx_sd.output_files import check_output_folder, save_numbered
    from mlx_sd.pipeline import Pipeline
    from mlx_sd.request import GenerationRequest, RequestError
    from mlx_sd.samplers import Cancelled, sampler_and_schedule

    err = sys.stderr
    if args.fps <= 0 or args.fps > 100:
        raise RequestError("fps", args.fps, "a number above 0 and at most 100")
    check_output_folder(args.output)
    folder = resolve_model_folder(args.model)
    config = read_config(folder)
    sampler, schedule = sampler_and_schedule(args.sampler, args.schedule)
    base = GenerationRequest(
        negative_prompt=args.negative,
        width=config.default_size if args.width is None else args.width,
        height=config.default_size if args.height is None else args.height,
        steps=args.steps, cfg_scale=args.cfg, sampler=sampler, schedule=schedule, seed=args.seed,
    )
    animation = Animation(args.from_prompt, args.to_prompt, args.frames, args.seed_to, args.blend)
    frames = planned_frames(config, base, animation)  # every check first
    seed = frames[0][0].seed

    err.write(f"loading {folder} ({config.family}, {config.prediction_type})\n")
    pipe = Pipeline.load(folder)
    bar = ProgressBar(err)
    images: list[Image.Image] = []
    started = time.perf_counter()

    bar.start_batch(0, len(frames))
    with StopOnInterrupt(err) as stop:
        try:
            for frame in render_frames(pipe, frames, lambda index, progress: bar(progress), stop):
                print(save_numbered(frame.image, args.output, seed, frame.infotext), flush=True)
                images.append(frame.image)
                if stop():
                    break
                bar.start_batch(frame.index + 1, len(frames))  # the next frame starts as the loop resumes
        except Cancelled:
            pass
    if stop():
        err.write(f"stopped: {len(images)} of {len(frames)} frames saved, no animation\n")
        return EXIT_INTERRUPTED
    paths = save_animations(images, args.output, seed, args.fps, args.format)
    for path in paths:
        print(path, flush=True)
    if paths[-1].suffix != ".mp4":
        err.write(MP4_MISSING + "\n")
    err.write(f"{len(images)} frames in {time.perf_counter() - started:.1f} s\n")
    return 0
