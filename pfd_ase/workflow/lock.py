"""One run per run directory: the lock ``workdir/run.lock``.

:func:`pfd_ase.workflow.run` holds the lock of its ``workdir`` while it works; a second run
(or recipe) on the same directory raises :class:`RunLockedError` naming the holder's PID,
host, start time and command, before any work. Recipes hold the lock across the workflow
and their validation with ``with run_lock(config["workdir"]):`` around both; the lock is
re-entrant within one thread, so the workflow's own ``run_lock`` inside does not refuse.

How it works: the holder keeps ``run.lock`` open with an exclusive ``flock`` and writes
``{"pid", "host", "started", "command"}`` into it. The kernel releases a ``flock`` when its
holder ends, however it ends (``kill -9`` included), so a lock file left by a killed run is
recognised exactly as stale and taken over (with a warning naming the dead run, logger
``pfd_ase.workflow``). The file is removed on release (normal exit or exception). A lock held
by a process on another host is seen wherever the file system passes ``flock`` between hosts
(local disks; NFS through its lock manager); a mount that keeps locks local to each host
(``local_lock=flock``) cannot tell.

Where ``flock`` is missing (Windows) or refused by the file system, the file is created with
``O_CREAT | O_EXCL`` and a lock whose PID no longer runs on this host is stale; a lock from
another host is then never taken over: remove ``run.lock`` by hand once that run has ended.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RunLockedError", "run_lock"]

logger = logging.getLogger("pfd_ase.workflow")

#: Name of the lock file in the run directory.
LOCK_FILE = "run.lock"

# errors of a file system without flock
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS)


class RunLockedError(RuntimeError):
    """Another run holds the run directory's lock.

    Attributes
    ----------
    path
        The lock file.
    holder
        What the holder wrote into it (``pid``, ``host``, ``started``, ``command``); empty
        when unreadable.
    """

    def __init__(self, path: Path, holder: Mapping[str, Any], note: str = "") -> None:
        self.path = Path(path)
        self.holder = dict(holder)
        super().__init__(
            f"run directory {self.path.parent} is in use by {_describe(self.holder)}"
            f"{'; ' + note if note else ''}; wait for that run to end or stop it "
            f"(lock file {self.path})"
        )


def _describe(holder: Mapping[str, Any]) -> str:
    if not holder.get("pid"):
        return "another run (its lock file is being written or unreadable)"
    text = f"PID {holder['pid']} on host {holder.get('host', '?')}"
    if holder.get("started"):
        text += f", started {holder['started']}"
    if holder.get("command"):
        text += f" ({holder['command']})"
    return text


@dataclass
class _Held:
    fd: int
    pid: int
    thread: int
    info: dict[str, Any]
    count: int = 1


_held: dict[str, _Held] = {}
_registry = threading.Lock()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, as another user
        return True
    except OSError:  # pragma: no cover - e.g. Windows: assume it runs
        return True
    return True


def _parse(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _read_fd(fd: int) -> dict[str, Any]:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return _parse(b"".join(chunks).decode(errors="replace"))


def _read_holder(path: Path, tries: int = 10) -> dict[str, Any]:
    """The JSON in ``path``; retried briefly while a new holder is writing it."""
    for _ in range(tries):
        try:
            holder = _parse(path.read_text(errors="replace"))
        except FileNotFoundError:
            return {}
        if holder:
            return holder
        time.sleep(0.02)
    return {}


def _write_fd(fd: int, info: Mapping[str, Any]) -> None:
    data = (json.dumps(info, sort_keys=True) + "\n").encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    os.fsync(fd)


def _command_line() -> str:
    argv = list(sys.argv) or [""]
    if argv[0] in ("", "-c") or argv[0].endswith(".py"):  # python -c / python -m / a script
        argv.insert(0, Path(sys.executable).name)
    return shlex.join(argv)


def _info(command: str | None) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command if command is not None else _command_line(),
    }


def _refusal(path: Path, holder: dict[str, Any]) -> RunLockedError:
    note = ""
    if holder.get("host") == socket.gethostname() and holder.get("pid"):
        if not _pid_alive(int(holder["pid"])):
            note = "that PID has ended, but a process it started still holds the lock"
    elif holder.get("host"):
        note = "a run on another host"
    return RunLockedError(path, holder, note)


def _stale(path: Path, previous: Mapping[str, Any]) -> None:
    if previous:
        host = previous.get("host")
        where = "" if host == socket.gethostname() else f" (on host {host})"
        logger.warning(
            "taking over the lock of %s: %s%s has ended without releasing it",
            path.parent,
            _describe(previous),
            where,
        )


def _flock_acquire(path: Path, command: str | None) -> tuple[int, dict[str, Any]] | None:
    """Open and ``flock`` the lock file; None where the file system has no ``flock``."""
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refusal(path, _read_holder(path)) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _NO_FLOCK:
                return None
            raise
        # the file may have been removed (released) between open and flock: retry on the new
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            previous = _read_fd(fd)
            _stale(path, previous)
            info = _info(command)
            _write_fd(fd, info)
            return fd, info
        os.close(fd)
    raise RuntimeError(f"cannot lock {path}: it keeps being replaced")  # pragma: no cover


def _exclusive_acquire(path: Path, command: str | None) -> tuple[int, dict[str, Any]]:
    """Create the lock file exclusively (no ``flock``); a same-host lock of an ended PID
    is stale."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_holder(path)
            stale = (
                holder.get("host") == socket.gethostname()
                and bool(holder.get("pid"))
                and not _pid_alive(int(holder["pid"]))
            )
            if not stale:
                raise _refusal(path, holder) from None
            _stale(path, holder)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        info = _info(command)
        _write_fd(fd, info)
        return fd, info
    raise _refusal(path, _read_holder(path))


def _acquire(path: Path, command: str | None) -> tuple[int, dict[str, Any]]:
    if fcntl is not None and (got := _flock_acquire(path, command)) is not None:
        return got
    return _exclusive_acquire(path, command)


def _release(path: Path, fd: int) -> None:
    # remove the file while still holding the lock, then let go of it
    with contextlib.suppress(FileNotFoundError):
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            path.unlink()
    os.close(fd)


@contextlib.contextmanager
def run_lock(workdir: str | os.PathLike, command: str | None = None) -> Iterator[dict[str, Any]]:
    """Hold the lock of run directory ``workdir`` (created if missing) inside the block.

    Re-entrant within one thread: a nested ``run_lock`` on the same directory (e.g.
    :func:`pfd_ase.workflow.run` inside a recipe that holds the lock) just goes on holding
    it; the lock is released when the outermost block ends, by return or exception.

    Parameters
    ----------
    workdir
        The run directory.
    command
        Recorded as the holder's command (default: this process's command line).

    Yields
    ------
    dict
        The holder record written to ``workdir/run.lock``: ``pid``, ``host``, ``started``
        (ISO 8601, local time with offset), ``command``.

    Raises
    ------
    RunLockedError
        Another process, or another thread of this one, holds the lock.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir.resolve() / LOCK_FILE
    key = str(path)
    with _registry:
        held = _held.get(key)
        if held is not None and held.pid == os.getpid():
            if held.thread != threading.get_ident():
                raise RunLockedError(path, held.info, "another thread of this process")
            held.count += 1
        else:
            fd, info = _acquire(path, command)
            held = _held[key] = _Held(fd, os.getpid(), threading.get_ident(), info)
    try:
        yield dict(held.info)
    finally:
        with _registry:
            held.count -= 1
            if held.count == 0 and _held.get(key) is held:
                del _held[key]
                _release(path, held.fd)
