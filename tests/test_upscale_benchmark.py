"""benchmarks/upscale.py runs both sides on a tiny picture and prints its figures; its default tile is
the CLI's."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")


def test_the_benchmark_default_tile_is_the_clis():
    from benchmarks.upscale import CLI_TILE
    from mlx_sd.upscalers import DEFAULT_TILE

    assert CLI_TILE == DEFAULT_TILE


@pytest.mark.slow
def test_the_benchmark_runs_both_sides(capsys):
    from benchmarks.upscale import main

    assert main(["--size", "12", "--blocks", "1", "--tile", "8"]) == 0
    out = capsys.readouterr().out
    assert "speed ratio (torch/ours)" in out and "peak RSS" in out
    difference = float(out.rsplit("max abs difference of the outputs: ", 1)[1])
    assert difference <= 1e-4
