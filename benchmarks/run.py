"""Our MLX engine against the torch reference (diffusers), on the same machine, in one run.

    python -m benchmarks.run --family sd15|sd21|sdxl --size 512 --steps 20 [--rounds 2] [--runs 2]
                             [--sides ours,ours-bf16,torch,torch-bf16] [--cache /work/bench_cache]

Builds (once, cached) the family's full-size architecture with seeded random weights as a diffusers
folder and converts it to our format (benchmarks.sd_weights). Each round then runs every side in
its own process, one after the other (ours, ours-bf16, torch, torch-bf16, ours, ...), so that a change in the
machine's load affects all sides alike and each side's memory figures are its own. A side measures
load time (ours: Pipeline.load of our folder; torch: diffusers' from_pretrained of the same
weights; both with the files in the page cache), text encoding (prompt and negative, batch 2), one
UNet step with classifier-free guidance (batch 2), a VAE decode (batch 1) and an end-to-end
generation of --steps Euler steps (skipped with --steps 0), with peak RSS per phase and, for ours,
MLX's peak-memory counter.

Prints a table of medians over the rounds and, as its last line, one JSON object with every figure,
the per-round ratios ours/torch and the load averages.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .sd_weights import DEFAULT_CACHE, FAMILIES, prepare
from .side import SIDES

PHASES = ("load", "text", "unet", "vae", "e2e")
# ratios printed, where both sides ran: ours against each torch, our bfloat16 products against torch's bfloat16
RATIOS = (("ours", "torch"), ("ours", "torch-bf16"), ("ours-bf16", "torch-bf16"))


def default_sides() -> list[str]:
    from mlx_sd.cpu import kernels as cpu_kernels

    return [side for side in SIDES if side != "ours-bf16" or cpu_kernels.bf16_products()]


def run_side(side: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "benchmarks.side", "--side", side, "--family", args.family, "--size", str(args.size),
        "--steps", str(args.steps), "--runs", str(args.runs), "--cache", str(args.cache),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise SystemExit(f"{side} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def median_of(rounds: list[dict[str, Any]], side: str, phase: str, key: str) -> float | None:
    values = [r[side]["phases"][phase][key] for r in rounds if phase in r[side]["phases"]]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(rounds: list[dict[str, Any]], sides: list[str]) -> dict[str, Any]:
    medians: dict[str, Any] = {}
    for side in sides:
        medians[side] = {
            phase: {key: median_of(rounds, side, phase, key) for key in ("median_s", "rss_peak_mb", "mlx_peak_mb")}
            for phase in PHASES
            if phase in rounds[0][side]["phases"]
        }
    ratios: dict[str, Any] = {}
    for side, reference in ((s, r) for s, r in RATIOS if s in sides and r in sides):
        ratios[f"{side}/{reference}"] = {}
        for phase in medians[side]:
            per_round = [r[side]["phases"][phase]["median_s"] / r[reference]["phases"][phase]["median_s"] for r in rounds]
            ratios[f"{side}/{reference}"][phase] = {
                "time": round(statistics.median(per_round), 3),
                "per_round": [round(x, 3) for x in per_round],
                "rss_peak": round(medians[side][phase]["rss_peak_mb"] / medians[reference][phase]["rss_peak_mb"], 3),
            }
    return {"medians": medians, "ratios": ratios}


def print_table(summary: dict[str, Any], sides: list[str], rounds: list[dict[str, Any]]) -> None:
    medians, ratios = summary["medians"], summary["ratios"]
    columns = sides + list(ratios)
    print(f"{'figure':<22}" + "".join(f"{c:>18}" for c in columns))
    for phase in PHASES:
        if phase not in medians[sides[0]]:
            continue
        for key, label, unit in (("median_s", "time", "s"), ("rss_peak_mb", "peak RSS", "MB"), ("mlx_peak_mb", "MLX peak", "MB")):
            cells = []
            for side in sides:
                value = medians[side][phase][key]
                cells.append("-" if value is None else (f"{value:.2f} {unit}" if unit == "s" else f"{value:.0f} {unit}"))
            for name in ratios:
                ratio_key = {"median_s": "time", "rss_peak_mb": "rss_peak"}.get(key)
                cells.append(f"{ratios[name][phase][ratio_key]:.2f}x" if ratio_key else "")
            if key == "mlx_peak_mb" and all(c in ("-", "") for c in cells):
                continue
            print(f"{phase + ' ' + label:<22}" + "".join(f"{c:>18}" for c in cells))
    loads = [r[s]["phases"][p]["load_average"] for r in rounds for s in sides for p in r[s]["phases"]]
    print(f"load average during the measurements: {min(loads):.1f} to {max(loads):.1f} ({os.cpu_count()} cores)")


def cpu_model() -> str:
    """The CPU's model name: every figure is reported with it."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=tuple(FAMILIES), default="sd15")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20, help="end-to-end generation steps (0 skips it)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of every side")
    parser.add_argument("--runs", type=int, default=2, help="timed runs per phase after one warm-up")
    parser.add_argument(
        "--sides", help=f"comma-separated, from {', '.join(SIDES)} (default: all; ours-bf16 where the CPU has AVX512_BF16)"
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder for the random full-size weights")
    args = parser.parse_args(argv)
    sides = [s for s in (args.sides or ",".join(default_sides())).split(",") if s]
    unknown = [s for s in sides if s not in SIDES]
    if unknown or not sides:
        parser.error(f"--sides: expected names from {', '.join(SIDES)}, received {args.sides!r}")

    prepare(args.family, args.cache, log=lambda message: print(message, file=sys.stderr))
    rounds = []
    for index in range(args.rounds):
        results = {}
        for side in sides:
            print(f"round {index + 1}/{args.rounds}: {side} ...", file=sys.stderr, flush=True)
            results[side] = run_side(side, args)
        rounds.append(results)

    summary = summarize(rounds, sides)
    coretype = os.environ.get("OPENBLAS_CORETYPE") or "chosen by OpenBLAS"  # ours' matmul kernels (mlx_sd.cpu.blas)
    print(f"{args.family} at {args.size}x{args.size}, {args.steps} steps, {args.rounds} rounds x {args.runs} runs, "
          f"OpenBLAS kernels: {coretype}, CPU: {cpu_model()}")
    print_table(summary, sides, rounds)
    print(json.dumps({
        "family": args.family, "size": args.size, "steps": args.steps, "rounds": args.rounds, "runs": args.runs,
        "sides": sides, "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "platform": platform.platform(),
                    "openblas_coretype": coretype},
        **summary, "raw": rounds,
    }))


if __name__ == "__main__":
    main()
