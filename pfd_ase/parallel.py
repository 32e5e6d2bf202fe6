"""Executors for labelling and exploration: serial, local processes, Dask, Slurm (submitit).

Every stage takes a ``concurrent.futures.Executor`` (``None`` = serial, in-process);
:func:`make_executor` builds one from a small specification. The loop that runs tasks
through an executor is :func:`pfd_ase.tasks.run_each` (also importable from here).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

from pfd_ase.processes import die_with_parent
from pfd_ase.tasks import run_each
from pfd_ase.threads import set_threads, worker_threads

__all__ = ["KINDS", "SubmititExecutor", "make_executor", "run_each"]

#: Executor kinds of :func:`make_executor`.
KINDS = ("serial", "process", "dask", "slurm")


def _process_worker(threads: int) -> None:
    """Initializer of ``process`` workers: end with the parent, keep freed memory
    (:func:`pfd_ase.allocator.tune_allocator`, as the parent's entry point does), compute
    with ``threads`` threads (:func:`pfd_ase.threads.worker_threads`: the workers share the
    machine's cores; two workers of torch's default two threads each ran SevenNet MD 3x
    slower than of one on 2 cores)."""
    from pfd_ase.allocator import tune_allocator

    die_with_parent()
    tune_allocator()
    os.environ["PFD_THREADS"] = str(threads)  # this worker's compute_threads()
    set_threads(threads)


@contextmanager
def make_executor(spec: Mapping[str, Any] | None = None) -> Iterator[Executor | None]:
    """Yield the executor described by ``spec`` and shut it down afterwards.

    ``spec["kind"]``: ``"serial"`` (default; yields None), ``"process"`` (local processes,
    ``max_workers``), ``"dask"`` (``address`` of a scheduler, or a ``LocalCluster`` with
    ``max_workers`` single-threaded workers), ``"slurm"`` (submitit; ``slurm`` holds
    ``update_parameters`` keywords such as ``partition`` and ``timeout_min``).

    Local workers end when this process ends, even by ``kill -9``: ``"process"`` workers
    watch their parent (:func:`pfd_ase.processes.die_with_parent`), distributed's workers
    exit when their nanny's pipe closes. Slurm jobs run on.
    """
    spec = dict(spec or {})
    kind = spec.get("kind", "serial")
    workers = int(spec.get("max_workers") or 2)
    if kind == "serial":
        yield None
    elif kind == "process":
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=_process_worker,
            initargs=(worker_threads(workers),),
        ) as ex:
            yield ex
    elif kind == "dask":
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:
            raise ImportError(f"{exc}. Install: pip install 'pfd_ase[parallel]'") from exc
        if spec.get("address"):
            client = Client(spec["address"])
            cluster = None
        else:
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = Client(cluster)
        try:
            yield client.get_executor()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    elif kind == "slurm":
        yield SubmititExecutor(spec.get("folder", "slurm_logs"), **dict(spec.get("slurm", {})))
    else:
        raise ValueError(f"unknown executor kind {kind!r}; known: {', '.join(KINDS)}")


class SubmititExecutor(Executor):
    """``concurrent.futures.Executor`` over a submitit ``AutoExecutor`` (Slurm, or local
    processes where ``srun`` is absent). Each ``submit`` is one job."""

    def __init__(self, folder: str = "slurm_logs", **parameters: Any) -> None:
        try:
            import submitit
        except ImportError as exc:
            raise ImportError(f"{exc}. Install: pip install 'pfd_ase[parallel]'") from exc
        self._ex = submitit.AutoExecutor(folder=folder)
        if parameters:
            self._ex.update_parameters(**parameters)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        job = self._ex.submit(fn, *args, **kwargs)
        future: Future = Future()

        def wait() -> None:
            try:
                future.set_result(job.result())
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                future.set_exception(exc)

        import threading

        threading.Thread(target=wait, daemon=True).start()
        return future
