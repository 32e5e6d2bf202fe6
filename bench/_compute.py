"""Thread and allocator settings of the benchmarks, in one place.

deepmd-kit's import sets torch's intra-op threads from ``DP_INTRA_OP_PARALLELISM_THREADS``
(1 where ``scripts/build_lammps.sh``'s ``env.sh`` was sourced), so a benchmark sets that
variable for its children and sets torch's threads again after loading a model.
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
    """This process: torch's intra-op threads (call it after a model is loaded) and, with
    ``tune``, :func:`pfd_ase.allocator.tune_allocator` as the package's entry points do."""
    import torch

    from pfd_ase.allocator import tune_allocator

    torch.set_num_threads(threads)
    if tune:
        tune_allocator()
