"""Label many frames with a reference calculator, one task directory per frame.

:func:`label_frames` runs every frame through a ``concurrent.futures.Executor``
(in-process and serial when none is given). Frame ``i`` works in
``workdir/task.{i:06d}``:

``task.json``
    what the directory is for (frame id, labeler), written when the task starts;
``labelled.extxyz``
    the labelled frame, written atomically when the calculation finishes;
``failure.json``
    frame id, exception type and text and traceback of a failed calculation.

A rerun with the same frames and labeler skips every finished task, so a crash
never loses nor repeats a finished calculation; failed tasks are tried again.
"""

from __future__ import annotations

import json
import os
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from pfd_ase._io import read_json, write_json
from pfd_ase.calculators.labelers import (
    _canonical_name,
    _jsonable,
    check_labeler,
    is_calculator,
    labeler_info,
    make_labeler,
)
from pfd_ase.data import read_frames, write_frames
from pfd_ase.parallel import run_each

__all__ = ["LabelResult", "label_frames", "task_dir"]

RESULT_FILE = "labelled.extxyz"
TASK_FILE = "task.json"
FAILURE_FILE = "failure.json"
_PROPERTIES = ("energy", "forces", "stress")
_POSITION_TOL = 1e-6  # Å; a labeler that moves atoms further than this is an error


@dataclass
class LabelResult:
    """Outcome of :func:`label_frames`.

    Attributes
    ----------
    frames
        Labelled frames of the successful tasks, in input order.
    failures
        One record per failed frame: ``index``, ``frame_id``, ``task_dir``,
        ``exception`` (type name), ``message``, ``traceback``, ``attempts``.
    n_cached
        How many frames came from a previous run instead of a new calculation.
    """

    frames: list[Atoms] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    n_cached: int = 0


@dataclass
class _Task:
    index: int
    frame_id: str
    frame: Atoms
    labeler: Any  # a name, or a calculator object
    overrides: dict[str, Any]
    directory: str
    properties: tuple[str, ...]
    retries: int
    key: dict[str, Any]


def task_dir(workdir: str | os.PathLike, index: int) -> Path:
    """The directory of frame ``index`` under ``workdir``."""
    return Path(workdir) / f"task.{index:06d}"


def label_frames(
    frames: Iterable[Atoms],
    labeler: Any,
    workdir: str | os.PathLike,
    executor: Executor | None = None,
    properties: Sequence[str] = _PROPERTIES,
    *,
    retries: int = 0,
) -> LabelResult:
    """Label frames with energy, forces and stress, each in its own task directory.

    Parameters
    ----------
    frames
        Structures to label. ``atoms.info["pfd_frame_id"]`` names a frame
        (default: its index).
    labeler
        A name known to :func:`~pfd_ase.calculators.labelers.make_labeler`, a
        ``(name, overrides)`` pair, or a calculator object. Names travel to
        worker processes as names, so process pools work with any labeler; an
        object must be picklable for them (it is sent with every task) and must
        not be given to a thread pool (the threads would share it).
    workdir
        Run directory; frame ``i`` works in ``workdir/task.{i:06d}``.
    executor
        Any ``concurrent.futures.Executor``; ``None`` runs serially in-process.
    properties
        Labels to compute among ``"energy"``, ``"forces"``, ``"stress"``. The
        energy is always computed; stress only for fully periodic cells and
        calculators that implement it.
    retries
        Extra attempts for a failed calculation before it is recorded as failed.

    Returns
    -------
    LabelResult
        Labelled frames (new ``Atoms`` with a ``SinglePointCalculator``: energy
        and free_energy both the force-consistent energy, forces, Voigt stress
        in eV/Å³; ``info`` holds ``pfd_labeler``, ``pfd_labeler_settings`` (JSON),
        ``pfd_frame_id`` and, when it differs, ``pfd_energy_sigma0``), the
        failures and the number of frames reused from a previous run.

    Raises
    ------
    ValueError
        Unknown labeler or property, or a task directory that holds a finished
        result for another frame or labeler.
    LabelerSetupError
        The labeler cannot run (e.g. no VASP command or POTCARs): raised before
        the first calculation (not when every frame is already labelled).
    """
    frames = list(frames)
    for i, atoms in enumerate(frames):
        if not isinstance(atoms, Atoms):
            raise TypeError(f"frame {i} is a {type(atoms).__name__}, not ase.Atoms")
    properties = tuple(properties)
    unknown = set(properties) - set(_PROPERTIES)
    if unknown:
        raise ValueError(f"unknown properties {sorted(unknown)}; choose from {_PROPERTIES}")
    if retries < 0:
        raise ValueError("retries must be >= 0")
    name, overrides = _split_spec(labeler)
    key = _labeler_key(name, overrides)

    workdir = Path(workdir)
    result = LabelResult()
    done: dict[int, Atoms] = {}
    tasks: list[_Task] = []
    stale: list[str] = []
    for i, atoms in enumerate(frames):
        frame_id = str(atoms.info.get("pfd_frame_id", i))
        directory = task_dir(workdir, i)
        cached = _read_finished(directory, atoms, key)
        if cached is False:
            stale.append(directory.name)
        elif cached is not None:
            cached.info["pfd_frame_id"] = frame_id
            done[i] = cached
        else:
            tasks.append(
                _Task(i, frame_id, atoms, name, overrides, str(directory), properties, retries, key)
            )
    if stale:
        raise ValueError(
            f"{workdir} holds finished results for other frames or another labeler in "
            f"{', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}; use a fresh workdir"
        )
    result.n_cached = len(done)
    if tasks:  # everything is checked before the first calculation starts
        symbols = {s for task in tasks for s in task.frame.get_chemical_symbols()}
        check_labeler(name, symbols, overrides)

    failures: dict[int, dict[str, Any]] = {}
    try:
        for task, outcome in _run_all(tasks, executor):
            if isinstance(outcome, Atoms):
                done[task.index] = outcome
            else:
                failures[task.index] = outcome
    finally:
        _built().clear()  # do not keep a model alive in this process after the run
    result.frames = [done[i] for i in sorted(done)]
    result.failures = [failures[i] for i in sorted(failures)]
    return result


# --------------------------------------------------------------------------- scheduling


def _split_spec(labeler: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(labeler, str):
        return labeler, {}
    if isinstance(labeler, tuple) and len(labeler) == 2 and isinstance(labeler[0], str):
        overrides = dict(labeler[1] or {})
        overrides.pop("directory", None)  # each task sets its own
        return labeler[0], overrides
    if is_calculator(labeler):
        return labeler, {}
    raise TypeError(
        "labeler must be a name, a (name, overrides) pair or a calculator object, "
        f"not {type(labeler).__name__}"
    )


def _labeler_key(name: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(name, str):
        return {"name": _canonical_name(name), "overrides": _jsonable(dict(overrides))}
    return {"object": labeler_info(name)}


def _run_all(tasks: list[_Task], executor: Executor | None) -> Iterable[tuple[_Task, Any]]:
    def executor_failed(task: _Task, exc: Exception) -> dict[str, Any]:
        outcome = _failure(task, exc, attempts=1)
        _write_failure(task, outcome)
        return outcome

    return run_each(_run_task, tasks, executor, executor_failed)


# --------------------------------------------------------------------------- one task


def _run_task(task: _Task) -> Atoms | dict[str, Any]:
    """Label one frame in its directory; return the frame as stored, or a failure record."""
    directory = Path(task.directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / FAILURE_FILE).unlink(missing_ok=True)
    write_json(
        directory / TASK_FILE,
        {"index": task.index, "frame_id": task.frame_id, "labeler": task.key},
    )
    attempts = 0
    while True:
        attempts += 1
        try:
            with _calculator(task, directory) as calc, _single_threaded_blas(calc):
                labelled = _label(task.frame, calc, task.properties)
            break
        except Exception as exc:
            _built().clear()  # a retry starts from a fresh calculator
            if attempts > task.retries:
                failure = _failure(task, exc, attempts)
                _write_failure(task, failure)
                return failure
    labelled.info["pfd_frame_id"] = task.frame_id
    path = directory / RESULT_FILE
    _write_extxyz(path, labelled)
    stored = _read_extxyz(path)
    stored.info["pfd_frame_id"] = task.frame_id
    return stored


# labelers without files or state between calculations: built once per process (and
# thread) and reused, as loading CHGNet costs more than a call; only the last is kept
_REUSABLE = frozenset({"emt", "tersoff", "sw", "chgnet"})
_LOCAL = threading.local()


def _built() -> dict[str, Any]:
    if not hasattr(_LOCAL, "built"):
        _LOCAL.built = {}
    return _LOCAL.built


@contextmanager
def _calculator(task: _Task, directory: Path) -> Iterator[Any]:
    """The task's calculator working in ``directory`` (an object gets its directory back)."""
    if isinstance(task.labeler, str):
        name = _canonical_name(task.labeler)
        try:  # only plain settings identify a calculator safely
            cache_key = json.dumps([name, task.overrides], sort_keys=True)
        except TypeError:
            cache_key = None
        if name not in _REUSABLE or cache_key is None:
            yield make_labeler(name, directory=directory, **task.overrides)
            return
        built = _built()
        if cache_key not in built:
            built.clear()
            built[cache_key] = make_labeler(name, **task.overrides)
        calc = built[cache_key]
    else:
        calc = task.labeler
    if callable(getattr(calc, "reset", None)):
        calc.reset()
    if not hasattr(calc, "directory"):
        yield calc
        return
    previous = calc.directory
    calc.directory = str(directory)
    try:
        yield calc
    finally:
        calc.directory = previous


@contextmanager
def _single_threaded_blas(calc: Any) -> Iterator[None]:
    """GPAW is about 8x slower with threaded OpenBLAS on 2 cores: run it with one BLAS thread."""
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


def _label(frame: Atoms, calc: Any, properties: tuple[str, ...]) -> Atoms:
    """Run ``calc`` on a copy of ``frame``; return a new frame with the labels."""
    from ase.calculators.calculator import PropertyNotImplementedError
    from ase.calculators.singlepoint import SinglePointCalculator

    # the calculator is asked directly: Atoms getters would apply constraints
    work = frame.copy()
    work.calc = calc
    try:
        energy = float(calc.get_potential_energy(work, force_consistent=True))
    except (PropertyNotImplementedError, TypeError):  # no free energy: the plain one
        energy = float(calc.get_potential_energy(work))
    sigma0 = float(calc.get_potential_energy(work))
    results: dict[str, Any] = {"energy": energy, "free_energy": energy}
    if "forces" in properties:
        results["forces"] = np.array(calc.get_forces(work), dtype=float)
    if "stress" in properties and work.pbc.all() and _has_stress(calc):
        try:
            stress = calc.get_stress(work)
        except PropertyNotImplementedError:
            stress = None
        if stress is not None:
            stress = np.asarray(stress, dtype=float)
            if stress.shape == (3, 3):
                stress = stress.ravel()[[0, 4, 8, 5, 2, 1]]
            results["stress"] = stress
    moved = np.abs(work.positions - frame.positions).max(initial=0.0)
    if moved > _POSITION_TOL or np.abs(work.cell[:] - frame.cell[:]).max() > _POSITION_TOL:
        raise RuntimeError(
            f"the calculator moved the atoms by up to {moved:.3g} Å (a relaxation?); "
            "labelling needs single-point calculations"
        )

    out = _clean_copy(frame)
    info = labeler_info(calc)
    out.info["pfd_labeler"] = info["name"]
    out.info["pfd_labeler_settings"] = json.dumps(info["settings"], sort_keys=True)
    if sigma0 != energy:
        out.info["pfd_energy_sigma0"] = sigma0
    out.calc = SinglePointCalculator(out, **results)
    return out


def _has_stress(calc: Any) -> bool:
    implemented = getattr(calc, "implemented_properties", None)
    return implemented is None or "stress" in implemented


def _clean_copy(frame: Atoms) -> Atoms:
    """Copy of ``frame`` without old labels (they would clash with the new ones)."""
    from ase.calculators.calculator import all_properties

    out = frame.copy()
    out.calc = None
    for key in list(out.info):
        if key in all_properties or key == "pfd_energy_sigma0":
            del out.info[key]
    for key in list(out.arrays):
        if key in all_properties:
            del out.arrays[key]
    return out


def _failure(task: _Task, exc: BaseException, attempts: int) -> dict[str, Any]:
    return {
        "index": task.index,
        "frame_id": task.frame_id,
        "task_dir": task.directory,
        "exception": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "attempts": attempts,
    }


def _write_failure(task: _Task, failure: dict[str, Any]) -> None:
    try:
        write_json(Path(task.directory) / FAILURE_FILE, failure)
    except OSError:  # the record in LabelResult.failures remains
        pass


# --------------------------------------------------------------------------- files


def _write_extxyz(path: Path, atoms: Atoms) -> None:
    write_frames(path, [atoms])  # atomic, full precision


def _read_extxyz(path: Path) -> Atoms:
    return read_frames(path)[0]


def _read_finished(directory: Path, frame: Atoms, key: dict[str, Any]) -> Atoms | None | bool:
    """The finished result for ``frame`` in ``directory``; None if there is none,
    False if the directory holds a result for another frame or labeler."""
    path = directory / RESULT_FILE
    if not path.exists():
        return None
    try:
        record = read_json(directory / TASK_FILE)
        stored = _read_extxyz(path)
    except (OSError, ValueError):
        return False
    if json.dumps(record.get("labeler"), sort_keys=True) != json.dumps(key, sort_keys=True):
        return False
    same = (
        len(stored) == len(frame)
        and np.array_equal(stored.numbers, frame.numbers)
        and np.array_equal(stored.pbc, frame.pbc)
        and np.allclose(stored.cell[:], frame.cell[:], rtol=0, atol=_POSITION_TOL)
        and np.allclose(stored.positions, frame.positions, rtol=0, atol=_POSITION_TOL)
    )
    return stored if same else False
