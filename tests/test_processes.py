"""pfd_ase.processes: children (subprocesses, pool workers, deepmd-kit's command) end when
the process that started them is killed with SIGKILL; exit statuses, signals, progress."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pfd_ase import processes

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX process handling")

SLEEPER = "import os, sys, time; print(os.getpid(), flush=True); time.sleep(60)"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _gone_within(pid: int, seconds: float) -> float | None:
    """Seconds until ``pid`` ended, or None if it still runs after ``seconds``."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if not _alive(pid):
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def _driver(script: str, tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    """Start ``script`` in a Python process of its own; wait for the PIDs it prints."""
    path = tmp_path / "driver.py"
    path.write_text(textwrap.dedent(script))
    driver = subprocess.Popen(
        [sys.executable, str(path)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    pids = [int(word) for word in driver.stdout.readline().split()]
    assert pids, "the driver printed no PID"
    return driver, pids


def _kill_driver(driver: subprocess.Popen) -> None:
    driver.kill()
    driver.wait()
    driver.stdout.close()


def _cleanup(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- popen / run
@pytest.mark.parametrize("portable", [False, True], ids=["pdeathsig", "watchdog"])
def test_child_dies_with_its_killed_parent(tmp_path, portable):
    if not portable and not processes.PDEATHSIG:
        pytest.skip("no PR_SET_PDEATHSIG here")
    script = f"""
    import sys, time
    from pfd_ase.processes import popen
    popen([sys.executable, "-c", {SLEEPER!r}], portable={portable})
    time.sleep(60)
    """
    driver, (child,) = _driver(script, tmp_path)
    try:
        assert _alive(child)
        _kill_driver(driver)
        took = _gone_within(child, 3.0)
        assert took is not None, "the child outlived its parent's SIGKILL by 3 s"
        print(f"child gone {took:.3f} s after its parent's SIGKILL ({portable=})")
    finally:
        _cleanup([child])


def test_watchdog_by_hand_in_a_shell_command(tmp_path):
    """``exec python -m pfd_ase.processes -- CMD`` as a shell command line (ASE's way of
    running e.g. VASP): CMD ends with the Python process that started the shell."""
    script = f"""
    import shlex, subprocess, sys, time
    command = [sys.executable, "-m", "pfd_ase.processes", "--", sys.executable, "-c", {SLEEPER!r}]
    subprocess.Popen("exec " + shlex.join(command), shell=True)
    time.sleep(60)
    """
    driver, (child,) = _driver(script, tmp_path)
    try:
        assert _alive(child)
        _kill_driver(driver)
        assert _gone_within(child, 3.0) is not None
    finally:
        _cleanup([child])


def test_blocking_run_in_a_thread_ends_with_the_process(tmp_path):
    """``run`` from a worker thread: the child lives while the thread waits on it."""
    script = f"""
    import sys, threading, time
    from pfd_ase.processes import run
    threading.Thread(target=run, args=([sys.executable, "-c", {SLEEPER!r}],)).start()
    time.sleep(60)
    """
    driver, (child,) = _driver(script, tmp_path)
    try:
        time.sleep(0.5)
        assert _alive(child)
        _kill_driver(driver)
        assert _gone_within(child, 3.0) is not None
    finally:
        _cleanup([child])


@pytest.mark.parametrize("portable", [False, True], ids=["pdeathsig", "watchdog"])
def test_run_returns_status_and_output(portable):
    code = "import sys; print('out'); sys.exit(3)"
    done = processes.run(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, portable=portable
    )
    assert (done.returncode, done.stdout, done.args[0]) == (3, "out\n", sys.executable)
    with pytest.raises(subprocess.CalledProcessError):
        processes.run([sys.executable, "-c", code], check=True, portable=portable)
    shell = processes.run("echo $((2 + 3))", shell=True, stdout=subprocess.PIPE, portable=portable)
    assert shell.stdout == b"5\n"


def test_watchdog_passes_on_the_signal_that_ended_the_command():
    proc = processes.popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, portable=True)
    child = int(proc.stdout.readline())
    proc.terminate()  # reaches the whole group: watchdog and command
    assert proc.wait(timeout=10) == -signal.SIGTERM
    proc.stdout.close()
    assert _gone_within(child, 3.0) is not None


@pytest.mark.parametrize("portable", [False, True], ids=["pdeathsig", "watchdog"])
def test_run_kills_the_child_when_interrupted_or_timed_out(portable):
    calls = []

    def progress():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        processes.run(
            [sys.executable, "-c", "import time; time.sleep(60)"],
            progress=progress,
            poll_interval=0.1,
            portable=portable,
        )
    with pytest.raises(subprocess.TimeoutExpired):
        processes.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
    assert time.monotonic() - start < 20


def test_progress_is_called_while_running_and_after():
    calls = []
    done = processes.run(
        [sys.executable, "-c", "import time; time.sleep(0.6)"],
        progress=lambda: calls.append(time.monotonic()),
        poll_interval=0.1,
    )
    assert done.returncode == 0 and len(calls) >= 3


def test_popen_refuses_a_preexec_fn():
    with pytest.raises(TypeError, match="preexec_fn"):
        processes.popen(["true"], preexec_fn=lambda: None)


# --------------------------------------------------------------------------- pool workers
def test_pool_worker_dies_with_its_killed_parent(tmp_path):
    script = """
    import os, time
    from pfd_ase.parallel import make_executor
    if __name__ == "__main__":
        with make_executor({"kind": "process", "max_workers": 1}) as ex:
            pid = ex.submit(os.getpid).result()
            ex.submit(time.sleep, 60)
            print(pid, flush=True)
            time.sleep(60)
    """
    driver, (worker,) = _driver(script, tmp_path)
    try:
        time.sleep(0.3)
        assert _alive(worker)
        _kill_driver(driver)
        took = _gone_within(worker, 3.0)
        assert took is not None, "the pool worker outlived its parent's SIGKILL by 3 s"
        print(f"pool worker gone {took:.3f} s after its parent's SIGKILL")
    finally:
        _cleanup([worker])


def test_pool_workers_outlive_the_thread_that_started_them():
    import threading

    from pfd_ase.parallel import make_executor

    with make_executor({"kind": "process", "max_workers": 1}) as ex:
        pids = []
        thread = threading.Thread(target=lambda: pids.append(ex.submit(os.getpid).result()))
        thread.start()
        thread.join()
        time.sleep(2 * processes.WATCH_INTERVAL)
        assert ex.submit(os.getpid).result() == pids[0]


# --------------------------------------------------------------------------- deepmd-kit
FAKE_DEEPMD = "import os, sys, time; print(os.getpid(), flush=True); time.sleep(60)\n"


def test_deepmd_command_dies_with_its_killed_run(tmp_path):
    """``run_dp``'s ``python -m deepmd`` (a stand-in on PYTHONPATH) ends with its parent."""
    fake = tmp_path / "fake" / "deepmd"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(FAKE_DEEPMD)
    script = f"""
    import os, sys
    sys.path.insert(0, {str(tmp_path / "fake")!r})
    os.environ["PYTHONPATH"] = {str(tmp_path / "fake")!r}
    from pfd_ase.training.deepmd import run_dp
    run_dp(["train", "input.json"], {str(tmp_path / "train")!r}, threads=1)
    """
    path = tmp_path / "driver.py"
    path.write_text(textwrap.dedent(script))
    driver = subprocess.Popen([sys.executable, str(path)], start_new_session=True)
    log = tmp_path / "train" / "dp.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (log.exists() and log.read_text().count("\n") >= 2):
        time.sleep(0.05)
    lines = log.read_text().splitlines()
    assert lines[0].endswith("-m deepmd --pt train input.json"), lines
    child = int(lines[1])
    try:
        assert _alive(child)
        driver.kill()
        driver.wait()
        assert _gone_within(child, 3.0) is not None, "deepmd-kit outlived its killed run"
    finally:
        _cleanup([child])
