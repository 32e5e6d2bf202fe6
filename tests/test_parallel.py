"""The executor loop (pfd_ase.tasks.run_each): serial order, executor failures recorded, pending
calls cancelled on early stop."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from pfd_ase.tasks import run_each

from conftest import LosingExecutor


def _square(x: int) -> int:
    return x * x


def _record(item: int, exc: Exception) -> str:
    return f"failed: {exc}"


def test_serial_runs_in_order_in_this_process():
    assert list(run_each(_square, [3, 1, 2], None, _record)) == [(3, 9), (1, 1), (2, 4)]


def test_executor_results_and_a_lost_worker_recorded():
    out = dict(run_each(_square, [1, 2, 3], LosingExecutor(lambda x: x == 2), _record))
    assert out == {1: 1, 2: "failed: worker lost", 3: 9}
    with ThreadPoolExecutor(2) as pool:
        assert dict(run_each(_square, range(6), pool, _record)) == {i: i * i for i in range(6)}


def test_stopping_early_cancels_the_calls_not_started():
    executor = LosingExecutor(lambda x: False, pending=lambda x: x in (2, 3))
    results = run_each(_square, [1, 2, 3], executor, _record)
    assert next(results) == (1, 1)
    results.close()  # the caller stops (an error, Ctrl-C)
    assert [f.cancelled() for f in executor.futures] == [False, True, True]
