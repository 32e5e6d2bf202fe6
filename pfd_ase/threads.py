"""Threads this process computes with: one rule for torch, BLAS and the children it starts.

More busy threads than cores cost far more than their share: torch's and OpenBLAS's worker
threads spin while they wait for one another. Measured on the 2-core test machine
(2026-12-06; four SevenNet-0 MD walkers of 100 steps on 8-atom Si cells): serial, 2 torch
threads 18.7 s and 1 thread 25.1 s alone, but 62.6 s against 23.8 s beside one busy core;
in a pool of 2 worker processes, 47.5 s with torch's default threads against 16.0 s with 1.

- :func:`compute_threads`: ``PFD_THREADS`` when set (:func:`env_threads`), else this
  process's CPUs less the cores lent to work beside it, at least 1.
- :func:`lend_cores`: while its context is open, ``n`` cores belong to work running beside
  this process (the labeler's references of :func:`pfd_ase.recipes._base.references_beside`)
  for as long as ``alive()`` says so.
- :func:`match_threads`: applies :func:`compute_threads` while cores are lent (called at the
  start of every workflow step, :meth:`pfd_ase.workflow.state.RunState.run_step`); once no
  lent core is in use, the settings from before the first lend come back.
- :func:`set_threads`: torch's intra-op threads (when torch is imported), every BLAS and
  OpenMP pool already loaded (``threadpoolctl``), and ``OMP_NUM_THREADS``,
  ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` for libraries loaded later and for children.
- :func:`child_threads`: the thread variables of a child process started inside it.
- :func:`worker_threads`: threads of each worker of a local pool (``executor: {kind:
  process}``), which sets them in its initializer.

Nothing changes on import; without a lend and without ``PFD_THREADS`` nothing is set.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "THREAD_VARIABLES",
    "child_threads",
    "compute_threads",
    "cpu_count",
    "env_threads",
    "lend_cores",
    "match_threads",
    "set_threads",
    "worker_threads",
]

#: Environment variables read by OpenMP, OpenBLAS and MKL when they load.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

#: Cores lent to work beside this process: (cores, still running?).
_LENT: list[tuple[int, Callable[[], bool]]] = []
#: Settings before the first lend (restored when no lent core is in use) and the count applied.
_SAVED: dict[str, Any] = {}


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def env_threads() -> int | None:
    """``PFD_THREADS`` when set to a positive integer (another value warns), else None."""
    env = os.environ.get("PFD_THREADS", "").strip()
    if not env:
        return None
    if env.isdigit() and int(env) >= 1:
        return int(env)
    warnings.warn(f"PFD_THREADS={env!r} is not a positive integer: ignored", stacklevel=3)
    return None


def _lent_now() -> int:
    return sum(n for n, alive in _LENT if alive())


def compute_threads(cap: int | None = None) -> int:
    """Threads for this process's compute: ``PFD_THREADS`` when set to a positive integer,
    else :func:`cpu_count` less the cores lent and still in use (:func:`lend_cores`), at
    most ``cap`` and at least 1."""
    free = max(1, cpu_count() - _lent_now())
    return env_threads() or (free if cap is None else max(1, min(cap, free)))


def worker_threads(max_workers: int) -> int:
    """Threads of each of ``max_workers`` pool workers on this machine (at least 1)."""
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    return max(1, compute_threads() // max_workers)


def _limit_blas(n: int | None) -> None:
    """Limit (``n``) or give back (``None``) the BLAS/OpenMP pools loaded in this process."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a dependency; nothing to limit without it
        return
    previous = _SAVED.pop("blas", None)
    if previous is not None:
        previous.restore_original_limits()
    if n is not None:
        _SAVED["blas"] = threadpool_limits(limits=n)


def set_threads(n: int) -> None:
    """Compute with ``n`` threads: torch (when imported), the loaded BLAS/OpenMP pools and
    the thread variables of libraries loaded later and of child processes."""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(n)))
    _limit_blas(n)  # first: it records the pools' own counts (torch's OpenMP among them)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _put_env(values: dict[str, str | None]) -> None:
    """Set these environment variables (``None``: unset)."""
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def child_threads(n: int) -> Iterator[None]:
    """The thread variables and ``PFD_THREADS`` at ``n`` inside the context, as before after
    it: a child process started inside computes with ``n`` threads (a spawned child's
    environment is its parent's at start)."""
    names = (*THREAD_VARIABLES, "PFD_THREADS")
    saved = {key: os.environ.get(key) for key in names}
    os.environ.update(dict.fromkeys(names, str(n)))
    try:
        yield
    finally:
        _put_env(saved)


def _restore() -> None:
    """The settings from before the first lend."""
    _put_env(_SAVED["env"])
    _limit_blas(None)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_num_threads(_SAVED.get("torch") or cpu_count())


def match_threads() -> int | None:
    """Apply :func:`compute_threads` while cores are lent; give the settings from before
    back once no lent core is in use. Returns the threads applied (``None``: no lend, or
    nothing lent in use, so nothing was changed or the old settings are back)."""
    if not _LENT:
        return None
    n = compute_threads() if _lent_now() else None
    if n != _SAVED.get("applied"):
        if n is None:
            _restore()
        else:
            set_threads(n)
        _SAVED["applied"] = n
    return n


@contextlib.contextmanager
def lend_cores(n: int, alive: Callable[[], bool]) -> Iterator[None]:
    """Lend ``n`` cores to work beside this process while ``alive()`` is true.

    The threads follow at once and at every :func:`match_threads`; leaving the context
    gives back the settings from before (the lend ends even if ``alive()`` is still true).
    """
    if n < 0:
        raise ValueError(f"cores lent must be >= 0, got {n}")
    if not _LENT:
        torch = sys.modules.get("torch")
        _SAVED.clear()
        _SAVED.update(
            env={key: os.environ.get(key) for key in THREAD_VARIABLES},
            torch=torch.get_num_threads() if torch is not None else None,
            applied=None,
        )
    entry = (n, alive)
    _LENT.append(entry)
    try:
        match_threads()
        yield
    finally:
        _LENT.remove(entry)
        if not _LENT and _SAVED.get("applied") is not None:
            _restore()
            _SAVED["applied"] = None
