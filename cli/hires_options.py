"""`mlx-sd generate`'s hires fix options (A1111's "Hires. fix"): one argument group, the request
fields it sets, and the upscaler models it may name (mlx_sd.hires)."""

from __future__ import annotations

import argparse

from mlx_sd.hires import builtin_upscalers
from mlx_sd.request import GenerationRequest

DEFAULTS = GenerationRequest()


def add_hires_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "hires fix", "generate at the given size, upscale, then refine at the larger size with img2img (A1111's Hires. fix)"
    )
    group.add_argument(
        "--hires-scale", type=float, metavar="S",
        help="turn hires fix on: the second pass is S times the size (A1111's 'Upscale by', e.g. 2)",
    )
    group.add_argument(
        "--hires-width", type=int, metavar="PIXELS",
        help="turn hires fix on at this width (A1111's 'Resize width to'); without --hires-height the aspect ratio "
        "is kept, with it the upscale covers both and is cropped to them",
    )
    group.add_argument("--hires-height", type=int, metavar="PIXELS", help="as --hires-width, for the height")
    group.add_argument(
        "--hires-upscaler", default=DEFAULTS.hires_upscaler, metavar="NAME|FILE",
        help=f"{', '.join(builtin_upscalers())}, or an upscaler model: a name in the library's upscalers/ folder "
        f"or a .pth/.safetensors file (default {DEFAULTS.hires_upscaler!r})",
    )
    group.add_argument(
        "--hires-steps", type=int, default=DEFAULTS.hires_steps, metavar="N",
        help="steps of the second pass before the denoising strength is applied (default 0: as many as --steps)",
    )
    group.add_argument(
        "--hires-denoise", type=float, default=DEFAULTS.hires_denoise, metavar="D",
        help=f"the second pass's denoising strength from 0 to 1 (default {DEFAULTS.hires_denoise:g})",
    )
    group.add_argument("--hires-prompt", default="", metavar="TEXT", help="the second pass's prompt (default: the prompt)")
    group.add_argument(
        "--hires-negative", default="", metavar="TEXT", help="the second pass's negative prompt (default: --negative)"
    )
    group.add_argument("--hires-sampler", default="", metavar="NAME", help="the second pass's sampler (default: --sampler)")


def hires_fields(args: argparse.Namespace) -> dict[str, object]:
    """The GenerationRequest fields the options give; a ValueError for a scale and a size at once."""
    if args.hires_scale is not None and (args.hires_width is not None or args.hires_height is not None):
        raise ValueError("--hires-scale and --hires-width/--hires-height are alternatives: give one of them")
    return {
        "hires_scale": args.hires_scale or 0.0,
        "hires_width": args.hires_width or 0,
        "hires_height": args.hires_height or 0,
        "hires_upscaler": args.hires_upscaler,
        "hires_steps": args.hires_steps,
        "hires_denoise": args.hires_denoise,
        "hires_prompt": args.hires_prompt,
        "hires_negative": args.hires_negative,
        "hires_sampler": args.hires_sampler,
    }


def ineffective_hires_options(args: argparse.Namespace) -> list[str]:
    """Warnings for hires options given while hires fix is off."""
    if args.hires_scale or args.hires_width or args.hires_height:
        return []
    given = [
        f"--{name.replace('_', '-')}" for name in ("hires_upscaler", "hires_steps", "hires_denoise", "hires_prompt",
                                                   "hires_negative", "hires_sampler")
        if getattr(args, name) != getattr(DEFAULTS, name)
    ]
    return [f"{option} has no effect without --hires-scale or --hires-width/--hires-height" for option in given]
