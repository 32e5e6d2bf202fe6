"""Thread and allocator settings of the benchmarks, in one place.

deepmd-kit's import sets torch's intra-op threads from ``DP_INTRA_OP_PARALLELISM_THREADS``
(1 where ``scripts/build_lammps.sh``'s ``env.sh`` was sourced), so a benchmark sets that
variable for its children, and :func:`set_threads` imports deepmd-kit before it sets
torch's threads.
"""

from __future__ import annotations

import os

__all__ = ["child_env", "set_threads"]


def child_env(threads: int, tune: bool = False) -> dict[str, str]:
    """``os.environ`` for a child process that computes with ``threads`` threads.

    OpenMP and torch's intra-op threads (deepmd-kit's too) ``threads``, one inter-op
    thread, single-threaded OpenBLAS; ``tune``: glibc's variables of
    :data:`pfd_ase.allocator.ALLOCATOR_ENV` (a child that is not Python, e.g. LAMMPS).
    """
    from pfd_ase.allocator import ALLOCATOR_ENV

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1")
    env.update(DP_INTRA_OP_PARALLELISM_THREADS=str(threads), DP_INTER_OP_PARALLELISM_THREADS="1")
    if tune:
        env.update(ALLOCATOR_ENV)
    return env


def set_threads(threads: int, tune: bool = True) -> None:
    """This process, before it loads a model: with ``tune``,
    :func:`pfd_ase.allocator.tune_allocator` (as the package's entry points do at start-up),
    then torch's intra-op threads, after deepmd-kit's import (which would reset them)."""
    import torch

    from pfd_ase.allocator import tune_allocator

    if tune:
        tune_allocator()
    try:
        import deepmd.pt.utils.env  # noqa: F401 - sets torch's threads on import
    except ImportError:
        pass
    torch.set_num_threads(threads)
