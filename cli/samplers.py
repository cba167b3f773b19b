"""`mlx-sd samplers`: the samplers (with the schedule "Automatic" picks for each) and the schedules."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from mlx_sd.samplers import SAMPLERS, SamplerInfo
from mlx_sd.schedules import SCHEDULES

# Schedules that are no entry of A1111's list: samplers that bring their own timesteps.
_OWN_TIMESTEPS = {
    "ddim": "DDIM timesteps", "lcm": "LCM timesteps", "unipc_time_uniform": "UniPC timesteps",
    "sigma_range": "sigma_max to sigma_min",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "samplers",
        help="list the samplers and schedules `mlx-sd generate` accepts",
        description="List the samplers (A1111 names, matched case-insensitively) with the schedule "
        "'Automatic' means for each, and the schedules.",
    )
    parser.set_defaults(func=run)


def default_schedule_label(info: SamplerInfo) -> str:
    name = info.default_schedule.__name__
    return info.default_schedule_name or _OWN_TIMESTEPS.get(name, name)


def write_listing(out: TextIO) -> None:
    width = max(len(info.name) for info in SAMPLERS) + 2
    labels = {info.name: default_schedule_label(info) for info in SAMPLERS}
    label_width = max(len(label) for label in labels.values()) + 2
    out.write("Samplers (default schedule):\n")
    for info in SAMPLERS:
        notes = []
        if info.model_calls_per_step > 1:
            notes.append(f"{info.model_calls_per_step} model calls per step")
        if info.stochastic:
            notes.append("adds noise each step")
        note = f"({', '.join(notes)})" if notes else ""
        out.write(f"  {info.name:<{width}}{labels[info.name]:<{label_width}}{note}".rstrip() + "\n")
    out.write("Schedules:\n")
    for schedule in SCHEDULES:
        out.write(f"  {schedule.name}\n" if schedule.function else f"  {schedule.name}  (each sampler's default)\n")


def run(args: argparse.Namespace) -> int:
    write_listing(sys.stdout)
    return 0
