"""`mlx-sd generate`'s options for bigger pictures (issue 21): variation seeds, outpainting and the
SDXL refiner, in one argument group. Malformed values stop argument parsing (exit 2); so do the
combinations that cannot run, checked by `problem` before any weights load."""

from __future__ import annotations

import argparse

from mlx_sd.config import ModelConfig
from mlx_sd.refiner import check_refiner
from mlx_sd.request import GenerationRequest, RequestError

DEFAULTS = GenerationRequest()


def _size(text: str) -> tuple[int, int]:
    """WIDTHxHEIGHT -> (width, height)."""
    width, x, height = text.lower().partition("x")
    if not (x and width.strip().isdigit() and height.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 512x768, got {text!r}")
    return int(width), int(height)


def _sides(text: str) -> tuple[int, int, int, int]:
    """LEFT,RIGHT,TOP,BOTTOM -> four whole pixel counts, each a multiple of 8."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 4 or not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected LEFT,RIGHT,TOP,BOTTOM pixels such as 0,256,0,0, got {text!r}")
    sides = tuple(int(part) for part in parts)
    if any(side % 8 for side in sides):
        raise argparse.ArgumentTypeError(f"each side must be a multiple of 8 pixels, got {text!r}")
    return sides  # type: ignore[return-value]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("variation seeds, outpainting and the SDXL refiner")
    group.add_argument(
        "--variation-seed", type=int, default=DEFAULTS.variation_seed, metavar="SEED",
        help="A1111's variation seed: -1 picks a random one; image k uses it + k",
    )
    group.add_argument(
        "--variation-strength", type=float, default=DEFAULTS.variation_strength, metavar="S",
        help="0 (default) keeps the seed's noise, 1 is the variation seed's; 0.1-0.3 nudges a picture",
    )
    group.add_argument(
        "--resize-seed-from", type=_size, default=DEFAULTS.resize_seed_from, metavar="WxH",
        help="make the seeds' noise at this size and centre it, to keep a picture's layout at another size",
    )
    group.add_argument(
        "--outpaint", type=_sides, default=DEFAULTS.outpaint, metavar="LEFT,RIGHT,TOP,BOTTOM",
        help="with --init-image: extend the canvas by these pixels (multiples of 8) and paint the new area; "
        "--strength 0.8-1 suits it",
    )
    group.add_argument(
        "--refiner", metavar="NAME|FOLDER", default=DEFAULTS.refiner,
        help="an SDXL refiner (a library model's name or a model folder) that takes over the last steps of "
        "an SDXL base model's schedule",
    )
    group.add_argument(
        "--refiner-switch", type=float, default=DEFAULTS.refiner_switch, metavar="FRACTION",
        help=f"the fraction of the steps the base model runs before the refiner (default {DEFAULTS.refiner_switch:g})",
    )


def request_fields(args: argparse.Namespace) -> dict[str, object]:
    return {
        "variation_seed": args.variation_seed,
        "variation_strength": args.variation_strength,
        "resize_seed_from": args.resize_seed_from,
        "outpaint": args.outpaint,
        "refiner": args.refiner,
        "refiner_switch": args.refiner_switch,
    }


def problem(args: argparse.Namespace, request: GenerationRequest, config: ModelConfig) -> str | None:
    """What makes these options unable to run with this model, in one line, or None."""
    if any(args.outpaint) and args.init_image is None:
        return "--outpaint extends an image: give it with --init-image"
    if any(args.outpaint) and args.mask is not None:
        return "--outpaint masks the new area itself: leave out --mask"
    try:
        request.validate_bigger()
        check_refiner(config, request)
    except RequestError as exc:
        return str(exc)
    return None


def warnings(args: argparse.Namespace) -> list[str]:
    """One warning for each of these options given that the run would ignore."""
    found = []
    if args.variation_seed != DEFAULTS.variation_seed and not args.variation_strength:
        found.append("--variation-seed has no effect without --variation-strength")
    if args.refiner_switch != DEFAULTS.refiner_switch and not args.refiner:
        found.append("--refiner-switch has no effect without --refiner")
    return found
