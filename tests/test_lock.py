"""pfd_ase.workflow.lock: one run per run directory. A second process refuses naming the
holder; a lock left by a killed run is taken over; release on return and on exceptions;
re-entrant within a thread; workflow.run and ``pfd-ase run`` refuse before any work."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from pfd_ase.workflow import lock
from pfd_ase.workflow.lock import LOCK_FILE, RunLockedError, run_lock

HOLDER = """
import json, sys, time
from pfd_ase.workflow.lock import run_lock
with run_lock(sys.argv[1], command="the holder") as info:
    print(json.dumps(info), flush=True)
    if sys.argv[2] == "wait":
        time.sleep(60)
"""

SECOND = """
import sys
from pfd_ase.workflow.lock import RunLockedError, run_lock
try:
    with run_lock(sys.argv[1]) as info:
        print("acquired", info["pid"])
except RunLockedError as exc:
    print(exc)
    sys.exit(3)
"""


def _python(script: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def _holder(workdir: Path) -> tuple[subprocess.Popen, dict]:
    """A process holding the lock of ``workdir`` until killed; its record."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workdir), "wait"], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    assert line, "the holder did not start"
    return proc, json.loads(line)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def test_second_process_refuses_naming_the_holder(tmp_path):
    with run_lock(tmp_path / "w", command="pfd-ase run run.yaml") as info:
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        record = json.loads((tmp_path / "w" / LOCK_FILE).read_text())
        assert record == info and record["command"] == "pfd-ase run run.yaml"
        second = _python(SECOND, str(tmp_path / "w"))
    assert second.returncode == 3, second.stdout + second.stderr
    message = second.stdout.strip()
    assert "\n" not in message
    assert f"PID {os.getpid()} on host {socket.gethostname()}" in message
    assert f"started {info['started']}" in message and "pfd-ase run run.yaml" in message
    assert str(tmp_path / "w") in message
    # released: the next one gets it
    again = _python(SECOND, str(tmp_path / "w"))
    assert again.returncode == 0 and again.stdout.startswith("acquired"), again.stdout


def test_this_process_refuses_while_another_holds(tmp_path):
    holder, info = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=f"PID {info['pid']} on host") as caught:
            with run_lock(tmp_path):
                pytest.fail("acquired a held lock")
        assert caught.value.holder == info and isinstance(caught.value, RuntimeError)
        assert "the holder" in str(caught.value)
    finally:
        _kill(holder)


def test_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    holder, info = _holder(tmp_path)
    _kill(holder)  # SIGKILL: nothing released, the file stays
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == info["pid"]
    with caplog.at_level(logging.WARNING, logger="pfd_ase.workflow"):
        with run_lock(tmp_path) as mine:
            assert mine["pid"] == os.getpid()
            assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"PID {info['pid']}" in caplog.text and "taking over" in caplog.text
    assert not (tmp_path / LOCK_FILE).exists()


def test_released_on_normal_exit_of_the_holder_and_on_exceptions(tmp_path):
    done = _python(HOLDER, str(tmp_path), "exit")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / LOCK_FILE).exists()
    with pytest.raises(ValueError, match="inside"):
        with run_lock(tmp_path):
            raise ValueError("inside")
    assert not (tmp_path / LOCK_FILE).exists()
    second = _python(SECOND, str(tmp_path))
    assert second.returncode == 0, second.stdout


def test_reentrant_in_one_thread_refused_in_another(tmp_path):
    with run_lock(tmp_path) as outer:
        with run_lock(tmp_path / ".") as inner:  # the same directory, spelled otherwise
            assert inner == outer
        # the inner block's end did not release it
        assert _python(SECOND, str(tmp_path)).returncode == 3
        errors = []

        def other() -> None:
            try:
                with run_lock(tmp_path):
                    pass
            except RunLockedError as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert len(errors) == 1 and "another thread of this process" in errors[0]
    assert not (tmp_path / LOCK_FILE).exists()


def test_lock_from_another_host(tmp_path, caplog):
    """A held lock names the other host; a free one (stale file) is taken over."""
    holder = {"pid": 1, "host": "elsewhere", "started": "2024-01-01T00:00:00+00:00"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(holder))
    with caplog.at_level(logging.WARNING, logger="pfd_ase.workflow"):
        with run_lock(tmp_path):
            pass
    assert "on host elsewhere" in caplog.text


def test_without_flock_a_live_pid_refuses_and_a_dead_one_is_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "fcntl", None)
    holder, info = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=f"PID {info['pid']}"):
            with run_lock(tmp_path):
                pass
    finally:
        _kill(holder)
    with run_lock(tmp_path) as mine:
        assert mine["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()
    other = {"pid": 1, "host": "elsewhere", "started": "2024-01-01T00:00:00+00:00"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(other))
    with pytest.raises(RunLockedError, match="on host elsewhere.*another host"):
        with run_lock(tmp_path):
            pass


# --------------------------------------------------------------------------- users
def _fake_config(monkeypatch, workdir: Path, calls: list) -> None:
    """``load_config`` that accepts anything; ``write_structures`` (the first work) logged."""
    import pfd_ase.workflow
    import pfd_ase.workflow.config
    from pfd_ase.workflow import loops

    def load_config(config):
        return {"workdir": str(workdir), "progress": False}

    monkeypatch.setattr(pfd_ase.workflow, "load_config", load_config)
    monkeypatch.setattr(pfd_ase.workflow.config, "load_config", load_config)
    monkeypatch.setattr(loops, "write_structures", lambda *a: calls.append(a) or 1 / 0)


def test_workflow_run_refuses_before_any_work(tmp_path, monkeypatch):
    from pfd_ase.workflow import run

    calls: list = []
    _fake_config(monkeypatch, tmp_path / "w", calls)
    holder, info = _holder(tmp_path / "w")
    try:
        with pytest.raises(RunLockedError, match=f"PID {info['pid']}"):
            run({})
        assert not calls
    finally:
        _kill(holder)
    with pytest.raises(ZeroDivisionError):  # the lock taken over, the work started
        run({})
    assert len(calls) == 1 and not (tmp_path / "w" / LOCK_FILE).exists()


def test_workflow_run_inside_a_recipe_lock(tmp_path, monkeypatch):
    from pfd_ase.workflow import run

    calls: list = []
    _fake_config(monkeypatch, tmp_path, calls)
    with run_lock(tmp_path):
        with pytest.raises(ZeroDivisionError):
            run({})
        assert len(calls) == 1 and (tmp_path / LOCK_FILE).exists()  # still held
    assert not (tmp_path / LOCK_FILE).exists()


def test_cli_run_is_one_error_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pfd_ase.cli import app

    calls: list = []
    _fake_config(monkeypatch, tmp_path / "w", calls)
    (tmp_path / "run.yaml").write_text("structures: {}\n")
    holder, info = _holder(tmp_path / "w")
    try:
        result = CliRunner().invoke(app, ["run", str(tmp_path / "run.yaml")], terminal_width=500)
    finally:
        _kill(holder)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: run directory"), result.output
    assert f"PID {info['pid']} on host {info['host']}" in lines[0] and not calls
