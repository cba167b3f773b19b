"""The benchmark's torch sides run as diffusers' users run them: importing mlx_sd configures the
process's memory allocator (mlx_sd.cpu.memory), which alone changes torch's figures (its SD1.5 VAE
decode at 512 ran 10.7 -> 7.4 s with it), so a torch side must never import mlx_sd."""

import subprocess
import sys

TORCH_SIDE = """
import sys
from pathlib import Path
from benchmarks.side import backend_for
from benchmarks.sd_weights import locate

backend_for("torch", 512), backend_for("torch-bf16", 512), locate("sd15", Path("unused"))
print(sorted(name for name in sys.modules if name.split(".")[0] == "mlx_sd"))
"""


def test_the_torch_sides_leave_the_allocator_alone():
    done = subprocess.run([sys.executable, "-c", TORCH_SIDE], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_ratios_pair_each_of_our_sides_with_its_torch_counterpart():
    from benchmarks.run import summarize

    def side(seconds):
        return {"phases": {"unet": {"median_s": seconds, "rss_peak_mb": 100 * seconds, "mlx_peak_mb": None}}}

    rounds = [{"ours": side(6.0), "ours-bf16": side(4.0), "torch": side(8.0), "torch-bf16": side(5.0)}]
    ratios = summarize(rounds, ["ours", "ours-bf16", "torch", "torch-bf16"])["ratios"]
    assert sorted(ratios) == ["ours-bf16/torch-bf16", "ours/torch", "ours/torch-bf16"]
    assert ratios["ours-bf16/torch-bf16"]["unet"]["time"] == 0.8 and ratios["ours/torch"]["unet"]["rss_peak"] == 0.75
    assert list(summarize(rounds[:1], ["ours", "torch"])["ratios"]) == ["ours/torch"]
