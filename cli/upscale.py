"""`mlx-sd upscale IMAGE... --upscaler NAME|FILE|lanczos --scale S --output DIR`: upscale pictures
with an upscaler model (ESRGAN family, Real-ESRGAN compact) or a classic filter, keeping each
picture's A1111 `parameters` text and adding A1111's `Postprocess upscaler` / `Postprocess upscale by`.

NAME is a model in the library (`<library>/upscalers/NAME.pth` or `.safetensors`; by default the
app's default library, as for `mlx-sd serve`). Every input is checked (readable header, result within
the size limit) and the upscaler found and read before any picture is upscaled. Outputs are PNGs named `<input name>-<S>x.png` (`-2`, `-3`, ... when that is
taken), never overwriting a file, written completely or not at all; their paths go to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_SCALE = 4.0  # A1111's Extras default


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from mlx_sd.upscalers import CLASSIC_FILTERS, DEFAULT_TILE, MAX_UPSCALED_SIDE

    parser = subparsers.add_parser(
        "upscale",
        help="upscale pictures with an upscaler model (ESRGAN, Real-ESRGAN) or a classic filter",
        description="Upscale pictures and save them as PNGs, keeping their A1111 `parameters` text and "
        "adding `Postprocess upscaler` and `Postprocess upscale by`. Prints the saved paths, one per line.",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="PNG, JPEG or WebP pictures")
    parser.add_argument(
        "--upscaler", required=True, metavar="NAME|FILE|lanczos",
        help=f"a model in the library's upscalers/ folder by name, a .pth/.safetensors file, or a classic "
        f"filter ({', '.join(CLASSIC_FILTERS)}; any case)",
    )
    parser.add_argument(
        "--scale", type=float, default=DEFAULT_SCALE, metavar="S",
        help=f"how many times larger (default {DEFAULT_SCALE:g}); a model runs until the picture is at least "
        f"that large, then Lanczos gives the exact size; at most {MAX_UPSCALED_SIDE} pixels a side",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("outputs"), metavar="DIR", help="where to save (default ./outputs)"
    )
    parser.add_argument(
        "--tile", type=int, default=DEFAULT_TILE, metavar="PIXELS",
        help=f"a model runs on tiles of this many input pixels a side, to bound memory; 0 runs the whole "
        f"picture at once (default {DEFAULT_TILE})",
    )
    parser.add_argument(
        "--library", type=Path, metavar="DIR",
        help="the library folder whose upscalers/ NAME is looked up in, as in the app's Settings "
        "(default: the app's default library)",
    )
    parser.set_defaults(func=run)


def add_postprocess(infotext: str | None, upscaler: str, scale: float) -> str:
    """`infotext` with A1111's postprocessing fields appended to its parameter line (a line of its
    own when it has none)."""
    from mlx_sd.infotext import parse_infotext, quote

    fields = f"Postprocess upscaler: {quote(upscaler)}, Postprocess upscale by: {scale:g}"
    if not infotext or not infotext.strip():
        return fields
    separator = ", " if parse_infotext(infotext).params else "\n"
    return f"{infotext.rstrip()}{separator}{fields}"


def reserve_output(folder: Path, stem: str) -> Path:
    """Create an empty `<stem>.png` in `folder` (or `<stem>-2.png`, ...: the first name nobody has)
    atomically, so that nothing is overwritten even by another process saving there at once."""
    from mlx_sd.output_files import take_name

    folder.mkdir(parents=True, exist_ok=True)
    for number in range(1, sys.maxsize):
        path = folder / (f"{stem}.png" if number == 1 else f"{stem}-{number}.png")
        if take_name(path):
            return path
    raise OSError(f"no free file name for {stem} in {folder}")


def _check_inputs(images: list[Path], scale: float) -> None:
    from PIL import Image

    from mlx_sd.image_metadata import UNDECODABLE
    from mlx_sd.upscalers import upscaled_size

    for path in images:
        try:
            with Image.open(path) as image:  # the header only: sizes are known before any work
                size = image.size
        except UNDECODABLE as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
        try:
            upscaled_size(*size, scale)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    # the engine loads only when the command runs, so `mlx-sd --help` stays fast
    from app.library_folder import default_library_folder  # Qt-free
    from convert.upscaler_file import read_upscaler
    from mlx_sd.image_metadata import UNDECODABLE, open_image, save_image
    from mlx_sd.output_files import check_output_folder
    from mlx_sd.upscalers import resolve_upscaler, upscale_image

    err = sys.stderr
    if args.tile < 0:
        raise ValueError(f"--tile must be 0 (whole pictures) or a number of pixels, got {args.tile}")
    choice = resolve_upscaler(args.upscaler, (args.library or default_library_folder()).expanduser())
    _check_inputs(args.images, args.scale)
    check_output_folder(args.output)
    if isinstance(choice, Path):
        network, found = read_upscaler(choice)
        upscaler, name = network, choice.stem
        err.write(f"{name}: {found.description}\n")
    else:
        upscaler = name = choice
    for index, source in enumerate(args.images, 1):
        started = time.perf_counter()
        try:
            image, infotext = open_image(source)
        except UNDECODABLE as exc:
            raise ValueError(f"cannot read {source}: {exc}") from None

        def show(done: int, total: int) -> None:
            err.write(f"\r{source.name} ({index}/{len(args.images)}): tile {done}/{total}")
            err.flush()

        result = upscale_image(image, args.scale, upscaler, tile=args.tile, progress=show)
        path = reserve_output(args.output, f"{source.stem}-{args.scale:g}x")
        try:
            save_image(result, path, add_postprocess(infotext, name, args.scale), durable=True)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        err.write(f"\r{source.name}: {image.width}x{image.height} -> {result.width}x{result.height} "
                  f"in {time.perf_counter() - started:.1f} s\n")
        print(path, flush=True)
    return 0
