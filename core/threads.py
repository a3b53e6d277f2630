"""How many CPU threads torch uses in this process: the CPUs it was given, not every core of the machine.

On a busy machine, torch's default (one thread per core) makes its threads wait for each other:
one fusion epoch took 3.1-3.6 s with 1 thread and 38-127 s with 2 on two busy cores (issue 14).
"""
from __future__ import annotations

import os


def use_threads(n: float) -> int:
    """Use max(1, floor(n)) threads for torch's intra-op work and BLAS from now on; returns the count."""
    import torch

    count = max(1, int(n))
    torch.set_num_threads(count)
    os.environ["OMP_NUM_THREADS"] = str(count)  # for processes this one starts
    return count
