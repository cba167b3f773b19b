"""`mlx-sd models`: what the library holds (mlx_sd.library_listing), as a table per kind or as JSON.

Every name printed is one that `mlx-sd generate --model`, `--vae`, `<lora:NAME>` or a prompt's
embedding word accepts. A damaged file is listed with its problem; the command still succeeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KIND_TITLES = {"models": "Models", "loras": "LoRAs", "embeddings": "Embeddings", "vae": "VAEs", "upscalers": "Upscalers"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the library's models, LoRAs, embeddings, VAEs and upscalers",
        description="List what the library holds, with family and size on disk; damaged files are listed "
        "with their problem.",
    )
    parser.add_argument(
        "--library", type=Path, metavar="DIR",
        help="the library folder, as in the app's Settings (default: the app's default library)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (sizes in bytes) instead of tables")
    parser.add_argument(
        "--allow-pickle", action="store_true",
        help="read .pt/.ckpt LoRAs and embeddings (with torch's weights-only unpickler) to describe them",
    )
    parser.set_defaults(func=run)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def run(args: argparse.Namespace) -> int:
    from mlx_sd.library import Library
    from mlx_sd.library_listing import describe_library

    library = Library(args.library)
    listing = describe_library(library, args.allow_pickle)
    if args.json:
        print(json.dumps(_as_json(library.root, listing), indent=2, ensure_ascii=False))
    else:
        _print_tables(library.root, listing)
    for notice in library.notices():
        print(f"mlx-sd models: note: {notice}", file=sys.stderr)
    return 0


def _as_json(root: Path, listing: dict) -> dict:
    return {
        "library": str(root),
        **{
            kind: [
                {"name": i.name, "path": str(i.path), "size_bytes": i.size_bytes, **i.details, "problem": i.problem or None}
                for i in items
            ]
            for kind, items in listing.items()
        },
    }


def _print_tables(root: Path, listing: dict) -> None:
    print(f"Library: {root}")
    for kind, items in listing.items():
        print(f"\n{KIND_TITLES[kind]} ({len(items)})")
        if not items:
            print(f"  none (put them in {root / kind})")
            continue
        width = max(len(i.name) for i in items)
        for item in items:
            what = f"problem: {item.problem}" if item.problem else item.summary()
            print(f"  {item.name:<{width}}  {human_size(item.size_bytes):>9}  {what}".rstrip())
