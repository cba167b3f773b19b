"""`mlx-sd generate --model NAME|FOLDER "prompt"`: generate images and save them as numbered PNGs with
their A1111 infotext.

Every argument is checked before any weights load: the output folder (writable or creatable), the
init image and mask (decoded), then the request against the model's config (mlx_sd.generation.plan),
so a bad argument fails at once with one line; an option that would have no effect is warned about. Each batch is saved as soon as it is
done, under names that never overwrite a file (mlx_sd.output_files), and its paths are printed on
stdout; a progress bar with steps per second goes to stderr. Ctrl-C stops the run at the next step:
nothing partial is written and the exit code is 130 (a second Ctrl-C stops at once).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import NoReturn, TextIO

from PIL import Image

from cli.hires_options import add_hires_arguments, hires_fields, ineffective_hires_options
from cli import variation_outpaint_refiner_options
from mlx_sd.composable import prompt_parts
from mlx_sd.device import PRECISIONS
from mlx_sd.image_metadata import UNDECODABLE, open_image
from mlx_sd.library import Library
from mlx_sd.request import GenerationRequest, Progress
from mlx_sd.samplers import sampler_and_schedule
from mlx_sd.schedules import SCHEDULES

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
DEFAULTS = GenerationRequest()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate images from a prompt (txt2img, img2img, inpainting)",
        description="Generate images with a converted model and save them as PNGs carrying A1111's "
        "`parameters` text. Prints the paths of the saved files, one per line.",
    )
    parser.add_argument("prompt", help="the prompt, in A1111 syntax: (word:1.2), [word], BREAK")
    parser.add_argument(
        "--model", required=True, metavar="NAME|FOLDER",
        help="a model in the library by name (`mlx-sd models` lists them), a model folder made by "
        "`mlx-sd convert`, or 'demo' for the bundled demo model",
    )
    parser.add_argument("--negative", default=DEFAULTS.negative_prompt, metavar="TEXT", help="the negative prompt")
    parser.add_argument(
        "--dash-lines-negative", action="store_true",
        help="prompt lines starting with '-' go to the negative prompt (the video plugin's convention)",
    )
    parser.add_argument(
        "--width", type=int, metavar="PIXELS",
        help="multiple of 8 from 64 to 2048 (default: the init image's size, else the model's native size)",
    )
    parser.add_argument("--height", type=int, metavar="PIXELS", help="as --width")
    parser.add_argument("--steps", type=int, default=DEFAULTS.steps, help=f"sampling steps (default {DEFAULTS.steps})")
    parser.add_argument(
        "--cfg", type=float, default=DEFAULTS.cfg_scale, metavar="SCALE",
        help=f"classifier-free guidance scale; 1 skips the negative prompt (default {DEFAULTS.cfg_scale:g})",
    )
    parser.add_argument(
        "--sampler", default=DEFAULTS.sampler, metavar="NAME",
        help=f"an A1111 sampler name, any case, or one with its schedule ('DPM++ 2M Karras') "
        f"(default {DEFAULTS.sampler!r}; `mlx-sd samplers` lists them)",
    )
    parser.add_argument(
        "--schedule", default=DEFAULTS.schedule, metavar="NAME",
        help=f"{SCHEDULES[0].name} (the sampler's default), " + ", ".join(s.name for s in SCHEDULES[1:]),
    )
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="-1 picks a random seed; image k uses seed + k")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, metavar="N", help="images per model call")
    parser.add_argument("--batch-count", type=int, default=DEFAULTS.batch_count, metavar="N", help="batches to run")
    parser.add_argument("--init-image", type=Path, metavar="FILE", help="img2img: the image to start from")
    parser.add_argument(
        "--strength", type=float, metavar="STRENGTH",
        help=f"img2img denoising strength from 0 (the input) to 1 (default {DEFAULTS.strength:g})",
    )
    parser.add_argument("--mask", type=Path, metavar="FILE", help="inpainting: white repaints, black keeps")
    parser.add_argument(
        "--mask-blur", type=int, metavar="PIXELS",
        help=f"blur of the mask edge (default {DEFAULTS.mask_blur})",
    )
    parser.add_argument("--clip-skip", type=int, default=DEFAULTS.clip_skip, metavar="N", help="A1111's Clip skip")
    parser.add_argument(
        "--output", type=Path, default=Path("outputs"), metavar="DIR", help="where to save images (default ./outputs)"
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="float32",
        help="the CPU's products: float32 (default, exact) or bfloat16 (about 1.4x faster on CPUs with AVX512_BF16, "
        "as torch's bfloat16; slightly different images)",
    )  # fmt: skip
    add_vae_argument(parser)
    add_library_options(parser)
    add_hires_arguments(parser)
    variation_outpaint_refiner_options.add_arguments(parser)

    def one_line_error(message: str) -> NoReturn:
        parser.exit(2, f"mlx-sd generate: error: {message} (see mlx-sd generate --help)\n")

    parser.error = one_line_error  # type: ignore[method-assign]  # argparse would print the long usage first
    parser.set_defaults(func=run)


def add_vae_argument(parser: argparse.ArgumentParser) -> None:
    """The VAE a run decodes with (issue 17), named in the library (--library) or given as a file."""
    parser.add_argument_group("VAE").add_argument(
        "--vae", metavar="NAME|FILE",
        help="decode with another VAE: a name in the library's vae/ folder, a VAE file (.safetensors; .pt/.ckpt "
        "with --allow-pickle) or a diffusers vae folder; 'Automatic' is the model's own (the default)",
    )


def add_library_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "LoRAs and embeddings",
        "<lora:NAME:WEIGHT> in the prompt or negative prompt merges a LoRA; an embedding's file name in either "
        "prompt uses that textual-inversion embedding",
    )
    group.add_argument(
        "--library", type=Path, metavar="DIR",
        help="the library whose models/, loras/, embeddings/ and vae/ folders --model NAME, LoRAs, embeddings "
        "and --vae NAME are found in (default: the app's library folder)",
    )
    group.add_argument(
        "--lora-dir", type=Path, action="append", default=[], metavar="DIR",
        help="another folder of LoRA files, searched before the library (repeatable)",
    )
    group.add_argument(
        "--embeddings-dir", type=Path, action="append", default=[], metavar="DIR",
        help="another folder of textual-inversion embeddings, searched before the library (repeatable)",
    )
    group.add_argument(
        "--allow-pickle", action="store_true",
        help="read .pt/.ckpt LoRAs and embeddings (with torch's weights-only unpickler, which runs no code)",
    )


def library_from_args(args: argparse.Namespace) -> Library:
    return Library(args.library, {"loras": args.lora_dir, "embeddings": args.embeddings_dir})


# ---------------------------------------------------------------------------------------------
# Arguments -> request


def read_image(path: Path, option: str) -> Image.Image:
    """Open and decode an image file; a ValueError names the option, the file and the reason."""
    try:
        return open_image(path)[0]
    except UNDECODABLE as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"{option} {path}: cannot read it as an image ({reason}); expected a PNG, JPEG or WebP file") from None


def size_from_image(width: int, height: int, largest: int = 2048, smallest: int = 64) -> tuple[int, int]:
    """An output size for an init image: its own, scaled to fit `largest`, in multiples of 8."""
    scale = min(1.0, largest / max(width, height))
    return tuple(max(smallest, int(side * scale) // 8 * 8) for side in (width, height))  # type: ignore[return-value]


def ineffective_options(args: argparse.Namespace) -> list[str]:
    """One warning for each option given that this run would ignore."""
    warnings = []
    if args.strength is not None and args.init_image is None:
        warnings.append("--strength has no effect without --init-image")
    if args.mask_blur is not None and args.mask is None:
        warnings.append("--mask-blur has no effect without --mask")
    if args.negative and args.cfg <= 1 and not prompt_parts(args.prompt).composable:  # AND uses it at any scale
        warnings.append(f"--negative has no effect with --cfg {args.cfg:g} (guidance needs a scale above 1)")
    return warnings + ineffective_hires_options(args) + variation_outpaint_refiner_options.warnings(args)


def build_request(args: argparse.Namespace, default_size: int) -> GenerationRequest:
    if args.mask is not None and args.init_image is None:  # the engine's message names its fields, not the flags
        raise ValueError("--mask needs --init-image (the image whose white areas it repaints)")
    init = read_image(args.init_image, "--init-image") if args.init_image else None
    mask = read_image(args.mask, "--mask") if args.mask else None
    width, height = size_from_image(*init.size) if init is not None else (default_size, default_size)
    sampler, schedule = sampler_and_schedule(args.sampler, args.schedule)  # "DPM++ 2M Karras" too
    return GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative,
        dash_lines_negative=args.dash_lines_negative,
        width=width if args.width is None else args.width,
        height=height if args.height is None else args.height,
        steps=args.steps,
        cfg_scale=args.cfg,
        sampler=sampler,
        schedule=schedule,
        seed=args.seed,
        batch_size=args.batch_size,
        batch_count=args.batch_count,
        clip_skip=args.clip_skip,
        init_image=init,
        # these two default to None, so that one given without effect can be warned about
        strength=DEFAULTS.strength if args.strength is None else args.strength,
        mask=mask,
        mask_blur=DEFAULTS.mask_blur if args.mask_blur is None else args.mask_blur,
        vae=args.vae,
        **hires_fields(args),
        **variation_outpaint_refiner_options.request_fields(args),
    )


# ---------------------------------------------------------------------------------------------
# Progress and Ctrl-C


class ProgressBar:
    """Steps of each batch on `stream`: redrawn in place on a terminal; elsewhere (logs, pipes) a line
    for the first and last step of a batch and at most one every `interval` seconds between."""

    def __init__(self, stream: TextIO, live: bool | None = None, width: int = 24, interval: float = 5.0):
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self.width, self.interval = width, interval
        self.batch_index, self.batch_count = 0, 1
        self.started = self.first_step = self.last_line = time.perf_counter()

    def start_batch(self, batch_index: int, batch_count: int) -> None:
        self.batch_index, self.batch_count = batch_index, batch_count
        self.started = time.perf_counter()

    def __call__(self, progress: Progress) -> None:
        now = time.perf_counter()
        if progress.step == 1:
            self.first_step = now
            rate = 1.0 / max(now - self.started, 1e-9)  # includes the prompt encoding: a first estimate
        else:
            rate = (progress.step - 1) / max(now - self.first_step, 1e-9)
        label = f"batch {self.batch_index + 1}/{self.batch_count} " if self.batch_count > 1 else ""
        last = progress.step == progress.total
        if self.live:
            filled = self.width * progress.step // progress.total
            bar = "#" * filled + "-" * (self.width - filled)
            line = f"\r{label}[{bar}] {progress.step}/{progress.total} {rate:.2f} steps/s"
            self.stream.write(line + ("\n" if last else ""))
        elif progress.step == 1 or last or now - self.last_line >= self.interval:
            self.stream.write(f"{label}step {progress.step}/{progress.total}, {rate:.2f} steps/s\n")
            self.last_line = now
        self.stream.flush()


class StopOnInterrupt:
    """While active, the first Ctrl-C (SIGINT) asks the run to stop at its next step: calling the object
    returns True from then on. A second Ctrl-C raises KeyboardInterrupt at once. Outside the main thread
    (signals cannot be caught there) it does nothing."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.requested = False
        self._previous: object = None
        self._installed = False

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.stream.write("\nstopping at the next step (Ctrl-C again to stop at once)\n")
        self.stream.flush()

    def __enter__(self) -> "StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            # None: the previous handler was not set from Python; the default is the closest
            signal.signal(signal.SIGINT, signal.SIG_DFL if self._previous is None else self._previous)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The command


def resource_error(exc: ValueError, err: TextIO) -> int:
    """A model, VAE, LoRA or embedding that cannot be used: one line, and the exit code of a bad argument."""
    err.write(f"mlx-sd generate: error: {exc}\n")
    return 2


def run(args: argparse.Namespace) -> int:
    # the engine loads only when the command runs, so `mlx-sd --help` stays fast
    from convert.vae_file import read_vae
    from convert.upscaler_reader import library_upscaler_reader
    from mlx_sd.device import check_precision
    from mlx_sd.hires import upscaler_network
    from mlx_sd.generation import plan, random_seed, resolve_seed
    from mlx_sd.library import LibraryError
    from mlx_sd.lora import LoraError
    from mlx_sd.lora.active import without_lora_tags
    from mlx_sd.model_format import read_config
    from mlx_sd.model_paths import resolve_model_folder
    from mlx_sd.noise import image_seed
    from mlx_sd.output_files import check_output_folder, save_numbered
    from mlx_sd.pipeline import Pipeline
    from mlx_sd.samplers import Cancelled
    from mlx_sd.vae_swap import vae_path
    from mlx_sd.variation import batch_changes, with_resolved_variation_seed

    err = sys.stderr
    check_output_folder(args.output)
    for warning in ineffective_options(args):
        err.write(f"mlx-sd generate: warning: {warning}\n")
    library = library_from_args(args)
    try:
        folder = resolve_model_folder(args.model, library=library)
        vae_path(library, args.vae)  # an unknown VAE name fails before the weights load
    except LibraryError as exc:
        return resource_error(exc, err)
    config = read_config(folder)
    request = build_request(args, config.default_size)
    problem = variation_outpaint_refiner_options.problem(args, request, config)
    if problem:
        err.write(f"mlx-sd generate: error: {problem}\n")
        return 2
    planned = plan(config, request, library)  # every check before the weights load; canonical names
    request = planned.request
    read_upscaler = library_upscaler_reader(library.root)
    if planned.hires is not None:
        upscaler_network(planned.hires, read_upscaler)  # a hires upscaler model is found and read now
    check_precision(args.precision)
    try:  # every LoRA name found before the weights load
        for lora in without_lora_tags(request)[1]:
            library.find("loras", lora.name)
    except (LoraError, LibraryError) as exc:
        return resource_error(exc, err)
    seed = resolve_seed(request.seed)
    request = with_resolved_variation_seed(request, random_seed())

    err.write(f"loading {folder} ({config.family}, {config.prediction_type})\n")
    err.flush()
    pipe = Pipeline.load(folder, precision=args.precision, library=library, allow_pickle=args.allow_pickle)
    pipe.vae_reader = read_vae
    try:
        pipe.use_vae(request.vae)  # read now: a VAE that cannot be used fails before the first step
    except ValueError as exc:
        return resource_error(exc, err)
    pipe.read_upscaler = read_upscaler
    bar = ProgressBar(err)
    saved = 0
    started = time.perf_counter()
    with StopOnInterrupt(err) as stop:
        for batch_index in range(request.batch_count):
            # one call per batch, so finished batches are saved even if a later one is stopped
            start = batch_index * request.batch_size
            batch_seed = image_seed(seed, start)
            batch = dataclasses.replace(request, seed=batch_seed, batch_count=1, **batch_changes(request, start))
            bar.start_batch(batch_index, request.batch_count)
            try:
                result = pipe.generate(batch, on_progress=bar, cancel=stop)
            except Cancelled:
                break
            except (LoraError, LibraryError) as exc:
                return resource_error(exc, err)
            for notice in result.notices:
                err.write(f"mlx-sd generate: warning: {notice}\n")
            for image, used_seed, infotext in zip(result.images, result.seeds, result.infotexts, strict=True):
                print(save_numbered(image, args.output, used_seed, infotext), flush=True)
                saved += 1
            if stop():
                break
    if stop():
        err.write(f"stopped: {saved} of {request.total_images} images saved\n")
        return EXIT_INTERRUPTED
    err.write(f"{saved} images in {time.perf_counter() - started:.1f} s\n")
    return 0
