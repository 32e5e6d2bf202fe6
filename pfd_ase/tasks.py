"""Task directories: one unit of work (a frame to label, an MD walker) in its own folder.

Labelling (:mod:`pfd_ase.label`) and exploration (:mod:`pfd_ase.explore`) run many
independent tasks through a ``concurrent.futures.Executor`` and resume after a crash
without repeating finished work. This module is what they share:

key
    :func:`task_key`: SHA-256 of the canonical JSON of what defines the task (its input
    frame or structure, its calculator spec, its settings). A finished result is reused
    only when the key stored with it equals the key of the task at hand.
directory
    :func:`numbered_dir`: ``workdir/{prefix}.{index:0{width}d}``, one per task.
task record
    written by :func:`start_task` when the task starts: the key and what the directory is
    for; an old failure record (and other files the caller names) are removed first.
done record
    written atomically and last, when the task has finished (:func:`write_done`, or a
    result file written atomically); its presence is what "finished" means.
failure record
    ``failure.json`` (:func:`failure_record`, :func:`write_failure`): exception type,
    message, traceback, attempts and cause of a failed task.
calculator spec
    :class:`CalculatorSpec`, made by :func:`calculator_spec` from a labeler name,
    ``(name, options)``, ``("pfd", {"model": ...})``, a picklable factory or a
    calculator object; :func:`calculator` turns it into a calculator inside a task.
executor loop
    :func:`run_each`: every task through an executor (or serially in this process).
time limit
    :func:`time_limit`: a task's wall-time limit (a ``SIGALRM`` timer),
    :class:`TaskTimeoutError` when it is passed.

Existing records: one rule for every user
-----------------------------------------
Before any task runs, :func:`split_finished` looks at the done record of every task:

* none (never run, interrupted, or failed: a failure record is no done record): the
  task runs (again);
* readable and holding the task's key: the result is reused, nothing runs;
* readable but holding another key (other frames, another labeler, other settings):
  :class:`MismatchedTaskError` (a ``ValueError``) naming every such directory, raised
  before any task runs and before any file is touched: the workdir belongs to another
  run, so use a fresh one (or remove those directories). A step that owns its workdir
  may ask instead to have it moved aside whole, to ``<workdir>.replaced``, and start
  afresh (:func:`pfd_ase.label.label_frames` with ``replace_mismatched=True``);
* unreadable (corrupt or truncated file, missing or unreadable task record, no key, an
  incomplete record): the done record is moved aside to ``<name>.stale`` (``.stale.1``,
  ``.stale.2``, ... when taken) with a :class:`StaleRecordWarning`, and the task runs
  again.

So a result is reused only under its own key, and no finished result is ever deleted:
a mismatched one stays where it is (or moves aside with its workdir), an unreadable one is
kept next to the new one.
Refusing a mismatch (rather than redoing the task) keeps one run's directories from
being silently overwritten by another's and never spends a second DFT calculation on a
workdir given by mistake.

Calculators
-----------
:func:`calculator` builds a spec's calculator once per process and thread and reuses
it for the following tasks (only the last one is kept; :func:`clear_calculators` drops
it), except that labelers which keep files between calls (``vasp``, ``gpaw``: those not
in :data:`REUSABLE_LABELERS`) are built fresh in the task directory when one is given.
A calculator object is used as it is. Every calculator is reset before a task; given a
directory, a calculator with a ``directory`` attribute works there and gets its own one
back afterwards; GPAW runs with a single BLAS thread (it is about 8x slower with
threaded OpenBLAS on two cores).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pfd_ase._io import write_json
from pfd_ase.calculators.labelers import (
    KNOWN_LABELERS,
    check_labeler,
    is_calculator,
    jsonable,
    labeler_info,
    make_labeler,
)

__all__ = [
    "FAILURE_FILE",
    "REUSABLE_LABELERS",
    "SPEC_KINDS",
    "REPLACED_SUFFIX",
    "STALE_SUFFIX",
    "CalculatorSpec",
    "MismatchedTaskError",
    "StaleRecordWarning",
    "TaskLike",
    "TaskTimeoutError",
    "calculator",
    "calculator_spec",
    "canonical_definition",
    "clear_calculators",
    "failure_record",
    "labeler_name",
    "move_aside",
    "numbered_dir",
    "run_each",
    "split_finished",
    "start_task",
    "task_key",
    "time_limit",
    "write_done",
    "write_failure",
]

#: File name of the failure record of a task.
FAILURE_FILE = "failure.json"
#: Suffix of a done record moved aside because it could not be read.
STALE_SUFFIX = ".stale"
#: Suffix of a file or directory of other inputs moved aside to make room for a new one
#: (a relabelled workdir, a re-relaxed structure).
REPLACED_SUFFIX = ".replaced"
#: Kinds of :class:`CalculatorSpec`.
SPEC_KINDS: tuple[str, ...] = ("labeler", "pfd", "factory", "object")
#: Labelers without files or state between calculations: built once per process (and
#: thread) and reused, as building CHGNet costs more than a call.
REUSABLE_LABELERS: frozenset[str] = frozenset({"emt", "tersoff", "sw", "chgnet"})

T = TypeVar("T")
R = TypeVar("R")
V = TypeVar("V")
TaskT = TypeVar("TaskT", bound="TaskLike")


class TaskLike(Protocol):
    """What :func:`split_finished` needs of a task: its directory and its key."""

    directory: str
    key: str


class MismatchedTaskError(ValueError):
    """Task directories hold finished results of other tasks (another key).

    Parameters
    ----------
    workdir
        The run directory.
    names
        Names of the mismatched task directories.
    what
        What they hold, e.g. ``"finished walkers of other settings"``.
    """

    def __init__(self, workdir: str | os.PathLike, names: Sequence[str], what: str) -> None:
        self.workdir = Path(workdir)
        self.names = list(names)
        shown = ", ".join(self.names[:5]) + (" ..." if len(self.names) > 5 else "")
        super().__init__(f"{workdir} holds {what} in {shown}; use a fresh workdir")


class StaleRecordWarning(UserWarning):
    """A done record could not be read: it was moved aside and its task runs again."""


# --------------------------------------------------------------------------- keys, directories


def canonical_definition(definition: Any) -> Any:
    """The JSON form in which a task definition is hashed and stored.

    Numpy values become Python numbers, tuples lists, paths strings, mapping keys
    strings (``str(key)``), non-finite floats strings; objects with ``todict()`` their
    dictionary, other objects their class name. Idempotent.
    """
    return json.loads(json.dumps(jsonable(definition), sort_keys=True))


def task_key(definition: Any) -> str:
    """Stable key of a task: SHA-256 (hex) of the canonical JSON of ``definition``.

    Parameters
    ----------
    definition
        What defines the task (input frame fingerprint, calculator spec description,
        settings), JSON-like; converted by :func:`canonical_definition`, so dictionary
        order, tuples versus lists and numpy versus Python numbers do not matter.

    Returns
    -------
    str
        64 hexadecimal digits, equal across processes, sessions and machines for equal
        definitions; ``task_key(canonical_definition(d)) == task_key(d)``.
    """
    text = json.dumps(canonical_definition(definition), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def numbered_dir(workdir: str | os.PathLike, prefix: str, index: int, width: int) -> Path:
    """The directory ``workdir/{prefix}.{index:0{width}d}`` of task ``index``."""
    return Path(workdir) / f"{prefix}.{index:0{width}d}"


# --------------------------------------------------------------------------- records


def start_task(
    directory: str | os.PathLike,
    task_file: str,
    key: str,
    record: Mapping[str, Any],
    clear: Iterable[str] = (),
) -> Path:
    """Prepare a task directory: create it, remove the failure record and the files in
    ``clear``, write the task record ``{"key": key, **record}`` (atomically).

    Returns
    -------
    Path
        The directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in (FAILURE_FILE, *clear):
        (directory / name).unlink(missing_ok=True)
    write_json(directory / task_file, {"key": key, **record})
    return directory


def write_done(
    directory: str | os.PathLike, done_file: str, key: str, record: Mapping[str, Any]
) -> None:
    """Write the done record ``{"key": key, **record}`` atomically; call it last."""
    write_json(Path(directory) / done_file, {"key": key, **record})


def failure_record(exc: BaseException, attempts: int = 1) -> dict[str, Any]:
    """The failure fields of a task that raised ``exc``.

    Returns
    -------
    dict
        ``exception`` (type name), ``message``, ``traceback`` (text), ``attempts`` and
        ``cause``: ``"Type: message"`` of the exception that caused this one (``raise
        ... from``, or the one being handled when it was raised), else ``None``. A
        process pool puts the worker's traceback there.
    """
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return {
        "exception": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "attempts": int(attempts),
        "cause": None if cause is None else f"{type(cause).__name__}: {cause}",
    }


def write_failure(directory: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Write the failure record of a task; an unwritable directory is ignored (the caller
    returns the record anyway)."""
    try:
        write_json(Path(directory) / FAILURE_FILE, dict(record))
    except OSError:
        pass


def move_aside(path: str | os.PathLike, suffix: str = STALE_SUFFIX) -> Path:
    """Rename ``path`` to ``path<suffix>`` (``<suffix>.1``, ``<suffix>.2``, ... when taken).

    Parameters
    ----------
    path
        A file or directory.
    suffix
        :data:`STALE_SUFFIX` (an unreadable record) or :data:`REPLACED_SUFFIX` (results of
        other inputs).

    Returns
    -------
    Path
        The new path.
    """
    path = Path(path)
    target = path.with_name(path.name + suffix)
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{suffix}.{n}")
    os.replace(path, target)
    return target


def split_finished(
    tasks: Sequence[TaskT],
    done_file: str,
    read: Callable[[Path], tuple[Any, V]],
    *,
    workdir: str | os.PathLike,
    what: str,
    check: Callable[[Path, V], None] | None = None,
) -> tuple[dict[int, V], list[TaskT]]:
    """Apply the rule for existing records (see the module docstring) to every task.

    Parameters
    ----------
    tasks
        The tasks, each with ``directory`` and ``key``.
    done_file
        Name of the done record in a task directory.
    read
        ``read(directory) -> (stored_key, value)`` of a task whose done record exists;
        any exception means the record is unreadable.
    workdir, what
        For the message of :class:`MismatchedTaskError`.
    check
        ``check(directory, value)`` of a record with the right key; an exception means it
        is incomplete (treated as unreadable).

    Returns
    -------
    finished, todo
        The values of the finished tasks by position in ``tasks``, and the tasks to run.

    Raises
    ------
    MismatchedTaskError
        Some done records hold another key; nothing was touched.
    """
    finished: dict[int, V] = {}
    todo: list[TaskT] = []
    mismatched: list[str] = []
    stale: list[tuple[Path, str]] = []
    for position, task in enumerate(tasks):
        directory = Path(task.directory)
        if not (directory / done_file).exists():
            todo.append(task)
            continue
        try:
            stored_key, value = read(directory)
        except Exception as exc:  # noqa: BLE001 - any failure to read means unreadable
            stale.append((directory, f"{type(exc).__name__}: {exc}"))
            todo.append(task)
            continue
        if stored_key != task.key:
            mismatched.append(directory.name)
            continue
        if check is not None:
            try:
                check(directory, value)
            except Exception as exc:  # noqa: BLE001
                stale.append((directory, f"{type(exc).__name__}: {exc}"))
                todo.append(task)
                continue
        finished[position] = value
    if mismatched:
        raise MismatchedTaskError(workdir, mismatched, what)
    for directory, reason in stale:
        moved = move_aside(directory / done_file)
        warnings.warn(
            f"{directory / done_file} cannot be used ({reason}); moved to {moved.name}, "
            "the task runs again",
            StaleRecordWarning,
            stacklevel=2,
        )
    return finished, todo


# --------------------------------------------------------------------------- calculator specs


@dataclass(frozen=True)
class CalculatorSpec:
    """How a task gets its calculator; picklable when ``options`` and ``obj`` are.

    Attributes
    ----------
    kind
        ``"labeler"`` (:func:`~pfd_ase.calculators.make_labeler` name and options),
        ``"pfd"`` (:class:`~pfd_ase.calculators.PFDCalculator` options), ``"factory"``
        (a callable with no arguments that returns a calculator) or ``"object"`` (a
        calculator object).
    name
        The canonical labeler name (``"pfd"`` for a PFD model; None otherwise).
    options
        Keyword arguments of the labeler or of ``PFDCalculator``.
    obj
        The factory or the calculator object.
    description
        JSON description recorded in task records and hashed into task keys:
        ``{"name", "options"}``, ``{"pfd": options}``, ``{"factory": ...}`` or
        ``{"object": labeler_info(obj)}``.
    """

    kind: str
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    obj: Any = None
    description: Any = None

    def build(self, directory: str | os.PathLike | None = None) -> Any:
        """A new calculator (a labeler works in ``directory`` when given)."""
        if self.kind == "object":
            return self.obj
        if self.kind == "factory":
            return self.obj()
        if self.kind == "pfd":
            from pfd_ase.calculators.pfd import PFDCalculator

            return PFDCalculator(**self.options)
        return make_labeler(self.name, directory=directory, **self.options)

    def check(self, symbols: Iterable[str] = ()) -> None:
        """Fail early and cheaply when the calculator cannot run for these elements.

        Raises
        ------
        FileNotFoundError
            A PFD model is neither a file nor a pre-trained name
            (:class:`~pfd_ase.models.ModelNotFoundError`).
        LabelerSetupError
            A labeler's program, pseudopotentials or Python package is missing.
        """
        if self.kind == "pfd":
            from pfd_ase.models import resolve_model

            paths = self.options["model"]
            paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
            for path in paths:  # a file, or a pre-trained name ("7net-0", "chgnet")
                resolve_model(path)
        elif self.kind == "labeler":
            check_labeler(self.name, symbols, self.options)
        elif self.kind == "object":
            check_labeler(self.obj, symbols)


def _model_identity(options: Mapping[str, Any]) -> str | list[str] | None:
    """Content identity of a PFD spec's model (a list for a committee), so that a model
    retrained at the same path defines other tasks; ``None`` where it cannot be resolved
    (:meth:`CalculatorSpec.check` reports that)."""
    from pfd_ase.models import resolve_model

    model, head = options["model"], options.get("head")
    try:
        if isinstance(model, str | os.PathLike):
            return resolve_model(model, head=head).identity
        return [resolve_model(m, head=head).identity for m in model]
    except Exception:  # noqa: BLE001 - a missing or odd model is check()'s to report
        return None


def labeler_name(name: str) -> str:
    """The canonical form of a labeler name; ``ValueError`` for an unknown one."""
    key = name.strip().lower()
    if key not in KNOWN_LABELERS:
        raise ValueError(f"unknown labeler {name!r}; known labelers: {', '.join(KNOWN_LABELERS)}")
    return key


_FORMS = {
    "labeler": "a labeler name, a (name, options) pair",
    "pfd": "('pfd', {'model': path, ...})",
    "object": "a calculator object",
    "factory": "a calculator factory",
}


def calculator_spec(
    spec: Any, *, kinds: Sequence[str] = SPEC_KINDS, what: str = "calculator"
) -> CalculatorSpec:
    """Describe a calculator given as a name, a pair, a factory or an object.

    Parameters
    ----------
    spec
        A labeler name or ``(name, options)`` (``options["directory"]`` is dropped: each
        task sets its own); ``("pfd", {"model": path or paths, "head": ...})``; a
        calculator object; a callable with no arguments returning a calculator (module-
        level functions and ``functools.partial`` of them travel to worker processes);
        or a :class:`CalculatorSpec`.
    kinds
        The kinds accepted (see :data:`SPEC_KINDS`).
    what
        What the argument is called, for error messages.

    Returns
    -------
    CalculatorSpec

    Raises
    ------
    ValueError
        Unknown labeler name, or a PFD spec without ``options["model"]``.
    TypeError
        Anything else.
    """
    if isinstance(spec, CalculatorSpec) and spec.kind in kinds:
        return spec
    if isinstance(spec, str):
        spec = (spec, {})
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        options = dict(spec[1] or {})
        if spec[0].strip().lower() == "pfd" and "pfd" in kinds:
            if "model" not in options:
                raise ValueError('a ("pfd", options) model needs options["model"], a model path')
            description = {"pfd": jsonable(options), "identity": _model_identity(options)}
            return CalculatorSpec("pfd", "pfd", options, description=description)
        if "labeler" in kinds:
            name = labeler_name(spec[0])
            options.pop("directory", None)
            description = {"name": name, "options": jsonable(options)}
            return CalculatorSpec("labeler", name, options, description=description)
    if "object" in kinds and is_calculator(spec):
        return CalculatorSpec("object", obj=spec, description={"object": labeler_info(spec)})
    if "factory" in kinds and callable(spec) and not isinstance(spec, CalculatorSpec):
        return CalculatorSpec("factory", obj=spec, description={"factory": _callable_key(spec)})
    forms = [_FORMS[kind] for kind in SPEC_KINDS if kind in kinds]
    listed = ", ".join(forms[:-1]) + f" or {forms[-1]}" if len(forms) > 1 else forms[0]
    raise TypeError(f"{what} must be {listed}, not {type(spec).__name__}")


def _callable_key(func: Any) -> Any:
    if isinstance(func, functools.partial):
        return {
            "func": _callable_key(func.func),
            "args": jsonable(list(func.args)),
            "kwargs": jsonable(dict(func.keywords)),
        }
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


_LOCAL = threading.local()


def _built() -> dict[str, tuple[CalculatorSpec, Any]]:
    if not hasattr(_LOCAL, "built"):
        _LOCAL.built = {}
    return _LOCAL.built


def clear_calculators() -> None:
    """Drop the calculator kept for reuse in this process and thread."""
    _built().clear()


def _cache_token(spec: CalculatorSpec) -> str:
    """What identifies a spec's calculator in the cache: its plain settings, else a hash
    of its pickle, else the spec object itself (kept alive with the calculator)."""
    try:
        return json.dumps([spec.kind, spec.name, spec.options], sort_keys=True)
    except (TypeError, ValueError):
        pass
    try:
        payload = pickle.dumps((spec.kind, spec.name, spec.options, spec.obj))
    except Exception:  # noqa: BLE001 - e.g. a lambda: reused within this process only
        return f"id:{id(spec)}"
    return "pickle:" + hashlib.sha256(payload).hexdigest()


@contextmanager
def calculator(spec: CalculatorSpec, directory: str | os.PathLike | None = None) -> Iterator[Any]:
    """The calculator of ``spec`` for one task, working in ``directory`` when given.

    See the module docstring for when it is built, reused and reset.
    """
    if spec.kind == "object":
        calc = spec.obj
    elif directory is not None and spec.kind == "labeler" and spec.name not in REUSABLE_LABELERS:
        calc, directory = spec.build(directory), None  # fresh, already in its directory
    else:
        token, built = _cache_token(spec), _built()
        if token in built:
            calc = built[token][1]
        else:
            built.clear()
            calc = spec.build()
            built[token] = (spec, calc)
    if callable(getattr(calc, "reset", None)):
        calc.reset()
    with _working_in(calc, directory), _single_threaded_blas(calc):
        yield calc


@contextmanager
def _working_in(calc: Any, directory: str | os.PathLike | None) -> Iterator[None]:
    if directory is None or not hasattr(calc, "directory"):
        yield
        return
    previous = calc.directory
    calc.directory = str(directory)
    try:
        yield
    finally:
        calc.directory = previous


@contextmanager
def _single_threaded_blas(calc: Any) -> Iterator[None]:
    if "gpaw" not in type(calc).__module__:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# --------------------------------------------------------------------------- time limit


class TaskTimeoutError(TimeoutError):
    """A task ran past its wall-time limit (:func:`time_limit`)."""


@contextmanager
def time_limit(timeout_s: float | None, what: str = "the task") -> Iterator[bool]:
    """Raise :class:`TaskTimeoutError` in this thread once ``timeout_s`` seconds have passed.

    A hung Python calculator cannot be stopped safely from another thread, so the limit is
    a ``SIGALRM`` timer (``signal.setitimer``) whose handler raises the error in the main
    thread, where the task runs: serially in this process, in a ``ProcessPoolExecutor``
    worker, in a Slurm job. The error unwinds the calculation as any exception does: a
    program the calculator waits for through :mod:`subprocess` (VASP) is killed by
    ``subprocess.run``'s clean-up (its own children only when they die with it, e.g.
    through :mod:`pfd_ase.processes`).

    Limits: Python runs a signal handler between bytecodes, so a calculator blocked inside
    one long C call is stopped only when that call returns, and one that catches
    ``TimeoutError`` (or every exception) itself is not stopped. Another ``ITIMER_REAL``
    timer is suspended while the limit runs and re-armed afterwards. Outside the main
    thread (a thread pool, a Dask worker) or without ``setitimer`` (Windows) the limit
    cannot be set: the task runs without it, with a ``RuntimeWarning``.

    Parameters
    ----------
    timeout_s
        The limit (s, > 0); ``None``: none.
    what
        What runs, for the error message.

    Yields
    ------
    bool
        Whether the limit is enforced.
    """
    if timeout_s is None:
        yield False
        return
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    in_main = threading.current_thread() is threading.main_thread()
    if not (in_main and hasattr(signal, "setitimer")):
        warnings.warn(
            f"no time limit on {what}: a time limit needs SIGALRM and the main thread "
            f"(this is {threading.current_thread().name})",
            RuntimeWarning,
            stacklevel=3,
        )
        yield False
        return

    def expired(signum: int, frame: Any) -> None:
        raise TaskTimeoutError(f"{what} took longer than the time limit of {timeout_s:g} s")

    previous_handler = signal.signal(signal.SIGALRM, expired)
    previous_timer = signal.setitimer(signal.ITIMER_REAL, float(timeout_s))
    start = time.monotonic()
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_timer[0] > 0:  # someone else's timer: what is left of it
            left = max(previous_timer[0] - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, previous_timer[1])


# --------------------------------------------------------------------------- executor loop


def run_each(
    func: Callable[[T], R],
    items: Iterable[T],
    executor: Executor | None,
    on_error: Callable[[T, Exception], R],
) -> Iterator[tuple[T, R]]:
    """``(item, func(item))`` for every item: in order in this process when ``executor`` is
    None, else as the submitted calls complete.

    Parameters
    ----------
    func
        Runs one task and records its own failures (it should not raise).
    items
        The tasks.
    executor
        Any ``concurrent.futures.Executor``, or None.
    on_error
        ``on_error(item, exc)`` is the result of a call that the executor itself failed
        (pickling, a dead worker).

    Yields
    ------
    tuple
        ``(item, result)``. Calls not yet started are cancelled when the caller stops
        early (an error, a ``KeyboardInterrupt``).
    """
    if executor is None:
        for item in items:
            yield item, func(item)
        return
    futures: dict[Future, T] = {executor.submit(func, item): item for item in items}
    try:
        for future in as_completed(futures):
            item = futures[future]
            try:
                result = future.result()
            except Exception as exc:
                result = on_error(item, exc)
            yield item, result
    finally:
        for future in futures:
            future.cancel()
