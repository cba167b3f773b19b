"""An upscaler network prepared for the device it runs on, as a pipeline's models are at load.

On the CPU its convolutions become mlx_sd.cpu's (the compiled GEMM takes a 3x3 convolution's nine
taps in one call, where mlx's CPU convolution first gathers a patch buffer nine times the input),
and an RRDBNet's trunk is evaluated block by block, so that one tile's whole graph is never alive
at once. Figures in docs/performance.md.
"""

from __future__ import annotations

from ..block_evaluation import Boundary, evaluate_blocks
from ..cpu.accelerate import accelerate
from ..cpu.options import CpuOptions
from ..device import current_device
from ..module_swap import M
from .rrdbnet import RRDB


def for_device(model: M) -> M:
    """`model` with the default device's formulations swapped in; a network already prepared is
    returned as it is (its modules are no longer the plain classes the swaps look for)."""
    if current_device() == "cpu":
        model = accelerate(model, CpuOptions.for_this_machine())
    return evaluate_blocks(model, Boundary(), blocks=(RRDB,))
