"""pfd_ase.threads: a process computes on the cores nothing else beside it uses."""

from __future__ import annotations

import os

import pytest
import torch

from pfd_ase import threads
from pfd_ase.threads import (
    THREAD_VARIABLES,
    child_threads,
    compute_threads,
    lend_cores,
    match_threads,
    worker_threads,
)


@pytest.fixture
def four_cores(monkeypatch):
    """A 4-CPU machine, no PFD_THREADS, torch and the thread variables as they were."""
    monkeypatch.setattr(threads, "cpu_count", lambda: 4)
    monkeypatch.delenv("PFD_THREADS", raising=False)
    before = torch.get_num_threads(), {k: os.environ.get(k) for k in THREAD_VARIABLES}
    yield
    assert not threads._LENT
    torch.set_num_threads(before[0])


def test_compute_threads_is_pfd_threads_else_the_cores_not_lent(four_cores, monkeypatch):
    assert compute_threads() == 4 and compute_threads(cap=2) == 2
    assert worker_threads(2) == 2 and worker_threads(3) == 1 and worker_threads(8) == 1
    monkeypatch.setenv("PFD_THREADS", "3")
    assert compute_threads() == 3 and compute_threads(cap=2) == 3  # what the user asked for
    monkeypatch.setenv("PFD_THREADS", "two")
    with pytest.warns(UserWarning, match="PFD_THREADS='two'"):
        assert compute_threads() == 4
    with pytest.raises(ValueError, match="max_workers"):
        worker_threads(0)


def test_lent_cores_limit_torch_blas_and_children_while_in_use(four_cores):
    from threadpoolctl import threadpool_info

    env = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    torch.set_num_threads(2)
    running = [True]
    with lend_cores(1, lambda: running[0]):
        assert compute_threads() == 3
        assert torch.get_num_threads() == 3  # applied on entry
        assert all(os.environ[k] == "3" for k in THREAD_VARIABLES)
        assert {p["num_threads"] for p in threadpool_info()} == {3}
        with lend_cores(2, lambda: True):
            assert match_threads() == 1 and torch.get_num_threads() == 1
        assert match_threads() == 3
        running[0] = False  # the work beside has ended: the settings from before
        assert match_threads() is None
        assert torch.get_num_threads() == 2 and compute_threads() == 4
        assert {k: os.environ.get(k) for k in THREAD_VARIABLES} == env
        running[0] = True
        assert match_threads() == 3
    assert torch.get_num_threads() == 2
    assert {k: os.environ.get(k) for k in THREAD_VARIABLES} == env
    assert match_threads() is None  # no lend: nothing is touched
    with pytest.raises(ValueError, match="cores lent"):
        with lend_cores(-1, lambda: True):
            pass


def test_every_workflow_step_starts_on_the_cores_not_lent(four_cores, tmp_path):
    from pfd_ase.workflow.state import RunState

    state = RunState(tmp_path / "run")
    running = [True]
    seen = []
    with lend_cores(1, lambda: running[0]):
        state.run_step("a", lambda: seen.append(torch.get_num_threads()) or {})
        running[0] = False
        state.run_step("b", lambda: seen.append(torch.get_num_threads()) or {})
    assert seen == [3, torch.get_num_threads()]


def test_pool_workers_share_the_cores():
    """Each worker of a pool as large as the machine computes with one thread: torch, BLAS,
    and the thread variables its children inherit."""
    from pfd_ase.parallel import make_executor

    n = threads.cpu_count()
    with make_executor({"kind": "process", "max_workers": n}) as ex:
        assert ex.submit(os.getenv, "OMP_NUM_THREADS").result() == "1"
        assert ex.submit(compute_threads).result() == 1
        assert ex.submit(eval, "__import__('torch').get_num_threads()").result() == 1


def test_child_threads_set_the_variables_inside_only(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.delenv("PFD_THREADS", raising=False)
    with child_threads(1):
        assert all(os.environ[k] == "1" for k in (*THREAD_VARIABLES, "PFD_THREADS"))
    assert os.environ["OMP_NUM_THREADS"] == "4" and "PFD_THREADS" not in os.environ
