"""The benchmark's torch sides run as diffusers' users run them: importing mlx_sd configures the
process's memory allocator (mlx_sd.cpu_memory), which alone changes torch's figures (its SD1.5 VAE
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
