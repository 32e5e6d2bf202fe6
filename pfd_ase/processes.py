"""Child processes that end with their parent, even when the parent is killed (``kill -9``).

Every subprocess the package starts (deepmd-kit's train and compress) goes through
:func:`popen` or :func:`run`; process-pool workers call :func:`die_with_parent` as their
initializer (:func:`pfd_ase.parallel.make_executor`). A rerun started right after a killed
run therefore never races an orphan of the killed one writing into the same run directory.

How a child dies with its parent:

- Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` in the child between ``fork`` and ``exec``;
  the kernel kills the child the moment its parent ends. The "parent" the kernel watches is
  the *thread* that started the child: call :func:`popen` from the main thread or from a
  thread that outlives the child (:func:`run` blocks until the child ends, so it is always
  safe). The child's own children are not covered (deepmd-kit starts none: it runs with
  ``NUM_WORKERS=0``).
- Other POSIX systems (``portable=True`` forces this on Linux too): the command runs under a
  small watchdog, ``python -m pfd_ase.processes --parent PID --portable -- CMD...``, in a
  session (process group) of its own; the watchdog polls ``os.getppid()`` every
  :data:`WATCH_INTERVAL` seconds and kills the whole group when the parent has gone. Signals
  sent through the returned ``Popen`` (``kill``, ``terminate``) reach the whole group.
- Windows: a plain ``subprocess.Popen``; nothing ends the child with its parent.

Pool workers (:func:`die_with_parent`) watch ``os.getppid()`` from a daemon thread instead
of using ``PR_SET_PDEATHSIG``: a pool starts its workers from whichever thread submits, and
a worker must not die when that thread ends. The thread runs whenever the worker's Python
code lets go of the GIL (numpy, torch and Python loops all do within milliseconds).

``python -m pfd_ase.processes [--parent PID] -- CMD...`` is also usable by hand: it runs CMD
until CMD ends or the watchdog's parent ends (then CMD is killed). Through a shell, the
watchdog must replace the shell (``exec``), or it watches the shell, which outlives the
Python process that started it: e.g. a labeler command line
``exec python -m pfd_ase.processes -- mpirun vasp_std``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["PDEATHSIG", "WATCH_INTERVAL", "die_with_parent", "main", "popen", "run"]

#: Whether this system has ``prctl(PR_SET_PDEATHSIG)`` (Linux).
PDEATHSIG: bool = sys.platform.startswith("linux")

#: Seconds between two looks at the parent by a watchdog or a pool worker's watcher thread.
WATCH_INTERVAL = 0.2

_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int]:
    """libc's ``prctl``, looked up in the parent (nothing is loaded between fork and exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _pdeathsig(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when ``parent`` ends."""
    prctl = _prctl()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent ended before prctl: end now
            _kill_self()

    return preexec


class _GroupPopen(subprocess.Popen):
    """A ``Popen`` of a session leader whose signals go to its whole process group."""

    def send_signal(self, sig: int) -> None:
        self.poll()
        if self.returncode is None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass


def popen(
    args: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    portable: bool | None = None,
    **kwargs: Any,
) -> subprocess.Popen:
    """``subprocess.Popen(args, **kwargs)`` of a child that ends when this process ends.

    Parameters
    ----------
    args
        The command, as for ``subprocess.Popen`` (a string with ``shell=True``).
    portable
        Use the watchdog process instead of ``PR_SET_PDEATHSIG`` (default: only where
        ``PR_SET_PDEATHSIG`` is missing). The watchdog needs ``pfd_ase`` importable by
        ``sys.executable`` and does not support the ``executable`` keyword.
    **kwargs
        ``subprocess.Popen`` keywords, except ``preexec_fn`` (taken) and, with the
        watchdog, ``start_new_session`` (always true).

    Returns
    -------
    subprocess.Popen
        The child (with the watchdog: the watchdog, whose ``args`` are set to ``args``, whose
        signals reach the command too and whose exit status is the command's).

    Notes
    -----
    With ``PR_SET_PDEATHSIG`` the child also ends when the *thread* that called this
    function ends: call it from the main thread or from a thread that outlives the child.
    """
    if "preexec_fn" in kwargs:
        raise TypeError("popen sets preexec_fn itself")
    if portable is None:
        portable = not PDEATHSIG
    if not portable:
        return subprocess.Popen(args, preexec_fn=_pdeathsig(os.getpid()), **kwargs)
    if os.name != "posix":  # pragma: no cover - Windows: no way to follow the parent here
        return subprocess.Popen(args, **kwargs)
    if "executable" in kwargs:
        raise TypeError("the watchdog does not support the executable keyword")
    if kwargs.pop("shell", False):
        command = ["/bin/sh", "-c", *([args] if isinstance(args, str | bytes) else args)]
    elif isinstance(args, str | bytes | os.PathLike):
        command = [args]
    else:
        command = list(args)
    kwargs["start_new_session"] = True
    watchdog = [sys.executable, "-m", "pfd_ase.processes", "--parent", str(os.getpid())]
    proc = _GroupPopen([*watchdog, "--portable", "--", *map(os.fsdecode, command)], **kwargs)
    proc.args = args
    return proc


def run(
    args: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    check: bool = False,
    timeout: float | None = None,
    progress: Callable[[], object] | None = None,
    poll_interval: float = 0.5,
    portable: bool | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess:
    """Run a child that ends when this process ends (:func:`popen`); wait for it.

    Like ``subprocess.run`` without ``input`` and ``capture_output``: pass ``stdout`` and
    ``stderr`` as for ``Popen`` (a ``subprocess.PIPE`` output is read after the child
    ends, so keep piped output small or use a file). If waiting is interrupted (an
    exception, e.g. ``KeyboardInterrupt``, or from ``progress``) or ``timeout`` passes, the
    child is killed and waited for before the exception propagates.

    Parameters
    ----------
    args
        The command.
    check
        Raise ``subprocess.CalledProcessError`` on a non-zero exit status.
    timeout
        Seconds to wait before killing the child and raising ``subprocess.TimeoutExpired``.
    progress
        Called every ``poll_interval`` seconds while the child runs, and once after it
        ended (whether it succeeded or not).
    poll_interval
        Seconds between two calls of ``progress``.
    portable
        See :func:`popen`.
    **kwargs
        ``subprocess.Popen`` keywords (see :func:`popen`).

    Returns
    -------
    subprocess.CompletedProcess
        ``args``, the exit status, and the output of piped streams (else None).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    with popen(args, portable=portable, **kwargs) as proc:
        try:
            while True:
                wait = poll_interval if progress is not None else None
                if deadline is not None:
                    left = max(deadline - time.monotonic(), 0.0)
                    wait = left if wait is None else min(wait, left)
                try:
                    returncode = proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise subprocess.TimeoutExpired(args, timeout) from None
                    if progress is not None:
                        progress()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        stdout = proc.stdout.read() if proc.stdout is not None else None
        stderr = proc.stderr.read() if proc.stderr is not None else None
    if progress is not None:
        progress()
    if check and returncode:
        raise subprocess.CalledProcessError(returncode, args, stdout, stderr)
    return subprocess.CompletedProcess(args, returncode, stdout, stderr)


def die_with_parent(interval: float = WATCH_INTERVAL) -> threading.Thread:
    """End this process (SIGKILL) as soon as its parent has ended; for pool initializers.

    Starts a daemon thread that compares ``os.getppid()`` with the parent seen now every
    ``interval`` seconds (POSIX; on Windows the parent is never seen to change). Use it as
    the ``initializer`` of a ``ProcessPoolExecutor`` with the ``spawn`` context.

    Returns
    -------
    threading.Thread
        The watcher thread (already started).
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        _kill_self()

    thread = threading.Thread(target=watch, name="pfd-ase-die-with-parent", daemon=True)
    thread.start()
    return thread


def _watchdog(command: list[str], parent: int, portable: bool, interval: float) -> int:
    """Run ``command``; kill it (and this process group) when ``parent`` ends."""
    if not portable and PDEATHSIG:
        _pdeathsig(parent)()  # the kernel ends this watchdog with its parent
    if os.getppid() != parent:
        return 128 + signal.SIGKILL
    leader = os.getpgrp() == os.getpid()
    child = (
        subprocess.Popen(command)
        if portable or not PDEATHSIG
        else subprocess.Popen(command, preexec_fn=_pdeathsig(os.getpid()))
    )

    def forward(signum: int, frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    # a terminal's Ctrl-C reaches the child directly; so do signals sent to the group of a
    # leader (popen's kill and terminate); others are passed on. The watchdog ends with the
    # child, the way the child ended.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN if leader else forward)
    while True:
        try:
            returncode = child.wait(timeout=interval)
            break
        except subprocess.TimeoutExpired:
            if os.getppid() != parent:
                if leader:
                    os.killpg(0, signal.SIGKILL)  # this watchdog too
                child.kill()
                child.wait()
                return 128 + signal.SIGKILL
    if returncode < 0:  # end the way the command ended
        signal.signal(-returncode, signal.SIG_DFL)
        os.kill(os.getpid(), -returncode)
        return 128 - returncode
    return returncode


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pfd_ase.processes [--parent PID] [--portable] -- CMD...``: run CMD
    until it ends or this process's parent ends (then CMD is killed); CMD's exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m pfd_ase.processes",
        description="Run a command that is killed when the process that started this ends.",
    )
    parser.add_argument("--parent", type=int, default=None, help="PID to follow (the parent)")
    parser.add_argument("--portable", action="store_true", help="poll; no PR_SET_PDEATHSIG")
    parser.add_argument("--interval", type=float, default=WATCH_INTERVAL, help="poll seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    parent = os.getppid() if args.parent is None else args.parent
    return _watchdog(command, parent, args.portable, args.interval)


if __name__ == "__main__":
    sys.exit(main())
