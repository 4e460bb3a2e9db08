"""One knob for the CPU threads a process computes with: torch's intra-op pool and numpy's BLAS.

Both default to a thread per core; the folded model (model/folded.py) runs on numpy's BLAS, so
setting torch's alone would let N processes × cores oversubscribe a small machine.
"""

from __future__ import annotations

import torch
from threadpoolctl import threadpool_limits


def set_threads(n: int) -> None:
    """Process-wide: `n` torch intra-op threads and `n` BLAS threads (n ≥ 1)."""
    torch.set_num_threads(n)
    threadpool_limits(n, user_api="blas")
