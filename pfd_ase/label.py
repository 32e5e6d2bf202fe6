"""Label many frames with a reference calculator, one task directory per frame.

:func:`label_frames` runs every frame through a ``concurrent.futures.Executor``
(in-process and serial when none is given). Frame ``i`` works in
``workdir/task.{i:06d}``:

``task.json``
    the task record, written when the task starts: its key, frame id and labeler;
``labelled.extxyz``
    the labelled frame: the done record, written atomically when the calculation
    finishes;
``failure.json``
    frame id, exception type and text, traceback, attempts, the exception it was raised
    from (``cause``) and the kind of failure (``kind``, :func:`failure_kind`) of a failed
    calculation.

A frame's key (:func:`pfd_ase.tasks.task_key`) hashes the frame's structure
(:func:`~pfd_ase.data.frame_fingerprint`: atomic numbers, positions, cell, pbc, bit for
bit) and the labeler (name and options, or the object's name and settings). A rerun
with the same frames and labeler skips every finished task, so a crash never loses nor
repeats a finished calculation; failed tasks are tried again. Existing records follow
the rule of :mod:`pfd_ase.tasks`: a finished result under another key (other frames,
another labeler) stops the run before any calculation (``ValueError``: use a fresh
workdir); one that cannot be read is moved aside to ``labelled.extxyz.stale`` with a
warning and the frame is labelled again.

Failures
--------
A frame whose calculation fails (after ``retries`` more attempts) is recorded, never
dropped silently: its ``failure.json``, and a record in :attr:`LabelResult.failures`; the
other frames are labelled as usual. :func:`failure_kind` sorts the failures
(:data:`FAILURE_KINDS`): an SCF that did not converge (GPAW's ``KohnShamConvergenceError``;
a VASP run whose OUTCAR says EDIFF was not reached, which ASE's ``Vasp`` itself accepts), a
program that exited with an error, output that is missing or truncated, a task past its
time limit (``timeout_s``, :func:`pfd_ase.tasks.time_limit`: a ``SIGALRM`` timer in the
main thread, so it works serially and in process pools, not in thread pools or Dask
workers), a worker the executor lost.

:func:`label_in_memory` labels a few frames in this process without task directories
(tests, benchmarks): the same labelled frames, nothing written, no resume.
"""

from __future__ import annotations

import json
import os
import traceback
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from pfd_ase._io import read_json
from pfd_ase.calculators.labelers import labeler_info
from pfd_ase.data import (
    FRAME_ID_KEY,
    LABELER_KEY,
    LABELER_SETTINGS_KEY,
    frame_fingerprint,
    read_frames,
    write_frames,
)
from pfd_ase.tasks import FAILURE_FILE as FAILURE_FILE  # the task's failure record
from pfd_ase.tasks import (
    REPLACED_SUFFIX,
    CalculatorSpec,
    MismatchedTaskError,
    TaskTimeoutError,
    calculator,
    calculator_spec,
    clear_calculators,
    failure_record,
    move_aside,
    numbered_dir,
    run_each,
    split_finished,
    start_task,
    task_key,
    time_limit,
    write_failure,
)

__all__ = [
    "ENERGY_SIGMA0_KEY",
    "FAILURE_KINDS",
    "LabelResult",
    "NotSinglePointError",
    "ReplacedWorkdirWarning",
    "SCFNotConvergedError",
    "failure_kind",
    "label_frames",
    "label_in_memory",
    "task_dir",
]

#: ``atoms.info`` key of the energy extrapolated to zero smearing (eV), kept when it
#: differs from the force-consistent energy of the labels.
ENERGY_SIGMA0_KEY = "pfd_energy_sigma0"
RESULT_FILE = "labelled.extxyz"
TASK_FILE = "task.json"
_PROPERTIES = ("energy", "forces", "stress")
_POSITION_TOL = 1e-6  # Å; a labeler that moves atoms further than this is an error
_MISMATCH = "finished results for other frames or another labeler"

#: The kinds of labelling failure (the ``kind`` of a failure record) and what they mean.
FAILURE_KINDS: dict[str, str] = {
    "timeout": "the task ran past its time limit (timeout_s, labeler.timeout_s)",
    "scf-not-converged": "the SCF did not converge (GPAW ConvergenceError, VASP EDIFF not "
    "reached, ASE SCFError)",
    "calculator-crashed": "the program exited with an error (ASE CalculationFailed: a "
    "non-zero exit status)",
    "bad-output": "the program's output is missing, truncated or unreadable",
    "setup": "the calculator cannot run with these settings (program, pseudopotentials, keywords)",
    "not-single-point": "the calculator moved the atoms (a relaxation, not a single point)",
    "worker-lost": "the executor lost the task (a dead worker, an object it cannot pickle)",
    "error": "any other exception (see exception, message and traceback)",
}


class SCFNotConvergedError(RuntimeError):
    """The calculator finished but says its SCF did not converge (``calc.converged`` is
    False: ASE's ``Vasp`` when the OUTCAR says EDIFF was not reached)."""


class NotSinglePointError(RuntimeError):
    """The calculator moved the atoms: labelling needs single-point calculations."""


class ReplacedWorkdirWarning(UserWarning):
    """``label_frames(replace_mismatched=True)`` moved a workdir of other frames or another
    labeler aside (the message says where) and labels every frame afresh."""


@dataclass
class LabelResult:
    """Outcome of :func:`label_frames`.

    Attributes
    ----------
    frames
        Labelled frames of the successful tasks, in input order.
    failures
        One record per failed frame: ``index``, ``frame_id``, ``task_dir``,
        ``exception`` (type name), ``message``, ``traceback``, ``attempts``, ``cause``
        (see :func:`pfd_ase.tasks.failure_record`) and ``kind``
        (:func:`failure_kind`).
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
    spec: CalculatorSpec
    directory: str
    properties: tuple[str, ...]
    retries: int
    key: str
    timeout_s: float | None = None


def task_dir(workdir: str | os.PathLike, index: int) -> Path:
    """The directory of frame ``index`` under ``workdir``."""
    return numbered_dir(workdir, "task", index, 6)


def _frame_key(frame: Atoms, spec: CalculatorSpec) -> str:
    """The task key of labelling ``frame`` with ``spec`` (see the module docstring)."""
    return task_key({"frame": frame_fingerprint(frame), "labeler": spec.description})


def label_frames(
    frames: Iterable[Atoms],
    labeler: Any,
    workdir: str | os.PathLike,
    executor: Executor | None = None,
    properties: Sequence[str] = _PROPERTIES,
    *,
    retries: int = 0,
    timeout_s: float | None = None,
    replace_mismatched: bool = False,
) -> LabelResult:
    """Label frames with energy, forces and stress, each in its own task directory.

    Parameters
    ----------
    frames
        Structures to label. ``atoms.info["pfd_frame_id"]`` names a frame
        (default: its index).
    labeler
        A name known to :func:`~pfd_ase.calculators.labelers.make_labeler`, a
        ``(name, overrides)`` pair, ``("pfd", {"model": path})`` (a trained model, e.g. the
        teacher of distillation), or a calculator object (see
        :func:`pfd_ase.tasks.calculator_spec`). Names and model specs travel to worker processes as
        names, so process pools work with any labeler; an object must be picklable
        for them (it is sent with every task) and must not be given to a thread pool
        (the threads would share it).
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
    timeout_s
        Wall-time limit of one frame's task, all its attempts together (s); a task past
        it is stopped and recorded as failed (kind ``"timeout"``, not retried).
        ``None``: no limit. Enforced where the task runs in a main thread (serially, in
        process pools, Slurm jobs; see :func:`pfd_ase.tasks.time_limit` for its limits).
    replace_mismatched
        When ``workdir`` holds finished tasks of other frames or another labeler: move it
        aside whole to ``<workdir>.replaced`` (``.replaced.1``, ... when taken; nothing is
        deleted; a :class:`ReplacedWorkdirWarning` says where) and label every frame
        afresh, the unchanged ones too, instead of raising
        :class:`~pfd_ase.tasks.MismatchedTaskError`. For a step that owns ``workdir``
        and whose frames may change between runs (a test set of changed settings). A
        workdir holding anything but task directories and ``labelled.extxyz`` is never
        moved: the error is raised.

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
        Unknown labeler or property, or (unless ``replace_mismatched``) a task directory
        that holds a finished result for another frame or labeler
        (:class:`~pfd_ase.tasks.MismatchedTaskError`).
    LabelerSetupError
        The labeler cannot run (e.g. no VASP command or POTCARs): raised before
        the first calculation (not when every frame is already labelled).

    Warns
    -----
    StaleRecordWarning
        A finished result that cannot be read was moved aside; the frame is labelled
        again.
    """
    frames = _checked_frames(frames)
    properties = _checked_properties(properties)
    if retries < 0:
        raise ValueError("retries must be >= 0")
    if timeout_s is not None and (
        isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0
    ):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    spec = calculator_spec(labeler, kinds=("labeler", "pfd", "object"), what="labeler")

    workdir = Path(workdir)
    tasks = [
        _Task(
            index=i,
            frame_id=str(atoms.info.get(FRAME_ID_KEY, i)),
            frame=atoms,
            spec=spec,
            directory=str(task_dir(workdir, i)),
            properties=properties,
            retries=retries,
            key=_frame_key(atoms, spec),
            timeout_s=None if timeout_s is None else float(timeout_s),
        )
        for i, atoms in enumerate(frames)
    ]

    def split() -> tuple[dict[int, Atoms], list[_Task]]:
        return split_finished(tasks, RESULT_FILE, _read_finished, workdir=workdir, what=_MISMATCH)

    try:
        done, todo = split()
    except MismatchedTaskError:
        if not replace_mismatched or _foreign_entries(workdir):
            raise
        spec.check({s for task in tasks for s in task.frame.get_chemical_symbols()})
        moved = move_aside(workdir, REPLACED_SUFFIX)
        warnings.warn(
            f"{workdir} held the labels of other frames or another labeler: moved to "
            f"{moved}, every frame is labelled afresh",
            ReplacedWorkdirWarning,
            stacklevel=2,
        )
        done, todo = split()
    for i, cached in done.items():
        cached.info[FRAME_ID_KEY] = tasks[i].frame_id
    result = LabelResult(n_cached=len(done))
    if todo:  # everything is checked before the first calculation starts
        spec.check({s for task in todo for s in task.frame.get_chemical_symbols()})

    failures: dict[int, dict[str, Any]] = {}
    try:
        for task, outcome in run_each(_run_task, todo, executor, _executor_failed):
            if isinstance(outcome, Atoms):
                done[task.index] = outcome
            else:
                failures[task.index] = outcome
    finally:
        clear_calculators()  # do not keep a model alive in this process after the run
    result.frames = [done[i] for i in sorted(done)]
    result.failures = [failures[i] for i in sorted(failures)]
    return result


def _foreign_entries(workdir: Path) -> list[str]:
    """Entries of ``workdir`` that :func:`label_frames` does not make (a workdir holding
    them is never moved aside: it may be more than a labelling folder)."""
    ours = ("task.", RESULT_FILE)  # the tasks, and the steps' collected labels (same name)
    return sorted(p.name for p in workdir.iterdir() if not p.name.startswith(ours))


def label_in_memory(
    frames: Iterable[Atoms], labeler: Any, properties: Sequence[str] = _PROPERTIES
) -> list[Atoms]:
    """Label a few frames here and now: no task directories, no resume, no executor.

    Each frame becomes a new labelled frame exactly as :func:`label_frames` makes it (the
    same labels, force-consistent energy, and the same ``info`` record of the labeler); one
    calculator labels every frame, in order, and the first failure raises. For small sets:
    tests, benchmarks, examples.

    Parameters
    ----------
    frames
        Structures to label (not modified).
    labeler
        A name known to :func:`~pfd_ase.calculators.labelers.make_labeler`, a
        ``(name, overrides)`` pair, ``("pfd", {"model": path})`` or a calculator object.
    properties
        As for :func:`label_frames`.

    Returns
    -------
    list of Atoms
        The labelled frames, in input order.
    """
    frames = _checked_frames(frames)
    properties = _checked_properties(properties)
    calc = calculator_spec(labeler, kinds=("labeler", "pfd", "object"), what="labeler").build()
    return [_label(atoms, calc, properties) for atoms in frames]


def _checked_frames(frames: Iterable[Atoms]) -> list[Atoms]:
    frames = list(frames)
    for i, atoms in enumerate(frames):
        if not isinstance(atoms, Atoms):
            raise TypeError(f"frame {i} is a {type(atoms).__name__}, not ase.Atoms")
    return frames


def _checked_properties(properties: Sequence[str]) -> tuple[str, ...]:
    properties = tuple(properties)
    unknown = set(properties) - set(_PROPERTIES)
    if unknown:
        raise ValueError(f"unknown properties {sorted(unknown)}; choose from {_PROPERTIES}")
    return properties


def _read_finished(directory: Path) -> tuple[Any, Atoms]:
    """Key and labelled frame of a finished task (any exception: unreadable)."""
    key = read_json(directory / TASK_FILE)["key"]
    return key, read_frames(directory / RESULT_FILE)[0]


# --------------------------------------------------------------------------- one task


def _run_task(task: _Task) -> Atoms | dict[str, Any]:
    """Label one frame in its directory; return the frame as stored, or a failure record."""
    directory = start_task(
        task.directory,
        TASK_FILE,
        task.key,
        {"index": task.index, "frame_id": task.frame_id, "labeler": task.spec.description},
    )
    attempts = 0
    labelled: Atoms | None = None
    error: BaseException | None = None
    try:
        with time_limit(task.timeout_s, f"labelling frame {task.frame_id}"):
            while labelled is None:
                attempts += 1
                try:
                    with calculator(task.spec, directory) as calc:
                        labelled = _label(task.frame, calc, task.properties)
                except TaskTimeoutError:
                    raise  # the time is up for every attempt
                except Exception as exc:
                    error = exc
                    clear_calculators()  # a retry starts from a fresh calculator
                    if attempts > task.retries:
                        break
    except TaskTimeoutError as exc:
        error = exc
        clear_calculators()  # interrupted anywhere: do not reuse it
    if labelled is None:  # (a time limit passed just after the result came is no failure)
        failure = _failure(task, error or RuntimeError("no result"), attempts)
        write_failure(directory, failure)
        return failure
    labelled.info[FRAME_ID_KEY] = task.frame_id
    path = directory / RESULT_FILE
    write_frames(path, [labelled])  # the done record: atomic, full precision, last
    stored = read_frames(path)[0]
    stored.info[FRAME_ID_KEY] = task.frame_id
    return stored


def _executor_failed(task: _Task, exc: Exception) -> dict[str, Any]:
    """The failure record of a task the executor lost (pickling, a dead worker)."""
    failure = _failure(task, exc, attempts=1, kind="worker-lost")
    write_failure(task.directory, failure)
    return failure


def _failure(
    task: _Task, exc: BaseException, attempts: int, kind: str | None = None
) -> dict[str, Any]:
    return {
        "index": task.index,
        "frame_id": task.frame_id,
        "task_dir": task.directory,
        **failure_record(exc, attempts),
        "kind": kind or failure_kind(exc),
    }


def failure_kind(exc: BaseException) -> str:
    """The kind of a labelling failure (a key of :data:`FAILURE_KINDS`).

    Decided by the exception's type and those it was raised from (``raise ... from``, or
    while handling): :class:`~pfd_ase.tasks.TaskTimeoutError` is ``"timeout"``; GPAW's
    ``ConvergenceError``, ASE's ``SCFError`` and :class:`SCFNotConvergedError` are
    ``"scf-not-converged"``; ASE's ``CalculationFailed`` (VASP exited non-zero) is
    ``"calculator-crashed"``; ASE's ``ReadError``, an XML parse error, or any error raised
    while an ASE calculator reads its output files (a truncated OUTCAR, a missing
    vasprun.xml) is ``"bad-output"``; :class:`NotSinglePointError` is
    ``"not-single-point"``; ASE's ``CalculatorSetupError`` and
    :class:`~pfd_ase.calculators.labelers.LabelerSetupError` are ``"setup"``; otherwise
    ``"error"``.
    """
    from xml.etree.ElementTree import ParseError

    from ase.calculators.calculator import CalculationFailed, CalculatorSetupError, ReadError

    from pfd_ase.calculators.labelers import LabelerSetupError

    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    names = {cls.__name__ for e in chain for cls in type(e).__mro__}
    if any(isinstance(e, TaskTimeoutError) for e in chain):
        return "timeout"
    if names & {"ConvergenceError", "SCFError", "SCFNotConvergedError"}:  # and subclasses
        return "scf-not-converged"
    if any(isinstance(e, ReadError | ParseError) for e in chain):
        return "bad-output"
    if any(isinstance(e, CalculationFailed) for e in chain):
        return "calculator-crashed"
    if any(isinstance(e, CalculatorSetupError | LabelerSetupError) for e in chain):
        return "setup"
    if any(isinstance(e, NotSinglePointError) for e in chain):
        return "not-single-point"
    if any(_raised_reading_output(e) for e in chain):
        return "bad-output"
    return "error"


def _raised_reading_output(exc: BaseException) -> bool:
    """Whether ``exc`` was raised under a method of an ASE calculator that reads output
    (``read_results``, ``read_*``, ``_read_*``: how ASE's file-based calculators read a
    program's output files)."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        name = frame.f_code.co_name
        if frame.f_globals.get("__name__", "").startswith("ase.calculators") and (
            name == "read" or name.startswith(("read_", "_read_"))
        ):
            return True
    return False


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
    if getattr(calc, "converged", None) is False:  # ASE's Vasp: EDIFF not reached
        raise SCFNotConvergedError(
            f"{type(calc).__name__} finished but its SCF did not converge (converged=False)"
        )
    moved = np.abs(work.positions - frame.positions).max(initial=0.0)
    if moved > _POSITION_TOL or np.abs(work.cell[:] - frame.cell[:]).max() > _POSITION_TOL:
        raise NotSinglePointError(
            f"the calculator moved the atoms by up to {moved:.3g} Å (a relaxation?); "
            "labelling needs single-point calculations"
        )

    out = _clean_copy(frame)
    info = labeler_info(calc)
    out.info[LABELER_KEY] = info["name"]
    out.info[LABELER_SETTINGS_KEY] = json.dumps(info["settings"], sort_keys=True)
    if sigma0 != energy:
        out.info[ENERGY_SIGMA0_KEY] = sigma0
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
        if key in all_properties or key == ENERGY_SIGMA0_KEY:
            del out.info[key]
    for key in list(out.arrays):
        if key in all_properties:
            del out.arrays[key]
    return out
