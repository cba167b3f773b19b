"""`mlx-sd`: the command-line entry point. Each subcommand lives in its own module of this package
and provides `add_parser(subparsers)` (which sets `func` on its parser) and the function it sets."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import mlx_sd  # first: binds OpenBLAS before any subcommand loads mlx.core (mlx_sd.cpu.blas)


# Modules of this package that define a subcommand, in the order `mlx-sd --help` lists them.
SUBCOMMANDS: tuple[str, ...] = ("convert", "info", "generate", "animate", "samplers", "serve", "upscale", "models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlx-sd", description="Stable Diffusion on MLX.")
    parser.add_argument("--version", action="version", version=f"mlx-sd {mlx_sd.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    mlx_sd.setup()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # bad input from the user: one line, no traceback
        if os.environ.get("MLX_SD_DEBUG"):
            raise
        print(f"mlx-sd {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as exc:
        from mlx_sd.generation import is_out_of_memory

        if not is_out_of_memory(exc) or os.environ.get("MLX_SD_DEBUG"):
            raise
        detail = f" ({exc})" if str(exc) else ""
        print(f"mlx-sd {args.command}: error: out of memory{detail}; try a smaller size or batch", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
