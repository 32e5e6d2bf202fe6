"""Run the walkers of an exploration, skip finished ones, gather their frames."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from pfd_ase._io import read_json
from pfd_ase.explore.models import _cache, _parse_model
from pfd_ase.explore.settings import (
    _FINISHED,
    DONE_FILE,
    TRAJECTORY_FILE,
    ExploreResult,
    ExploreTask,
    walker_dir,
)
from pfd_ase.explore.walker import (
    _failure_fields,
    _md_class,
    _progress_bar,
    _run_walker,
    _start_atoms,
    _Walker,
    _walker_key,
    _write_failure,
)
from pfd_ase.parallel import run_each
from pfd_ase.selectors.filters import REASON_KINDS, reason_kind


def explore(
    structures: Atoms | Sequence[Atoms],
    model: Any,
    workdir: str | os.PathLike,
    task: ExploreTask | None = None,
    *,
    executor: Executor | None = None,
    progress: bool = True,
    **settings: Any,
) -> ExploreResult:
    """Run MD walkers over a temperature × pressure × structure grid and sample frames.

    Parameters
    ----------
    structures
        Starting structures (one ``Atoms`` or a sequence). NPT needs fully periodic
        cells; every structure must pass the frame filter.
    model
        The MD model: a labeler name (``"sw"``, ``"emt"``...) or ``(name, options)``
        for :func:`~pfd_ase.calculators.make_labeler`; ``("pfd", {"model": path,
        "head": ...})`` for a :class:`~pfd_ase.calculators.PFDCalculator` (``model``
        may be a list of paths: a committee); a zero-argument callable returning a
        calculator; or a calculator object. Names, pairs and module-level callables
        travel to worker processes and are built there once per process; an object
        is pickled with every walker for a process pool, and must not be given to a
        thread pool (the threads would share it).
    workdir
        Run directory; walker ``i`` works in ``workdir/walker.{i:04d}``.
    task
        The settings; default ``ExploreTask(**settings)``.
    executor
        Any ``concurrent.futures.Executor``; ``None`` runs the walkers serially in
        this process.
    progress
        Show progress bars (walkers; and steps when serial).
    **settings
        :class:`ExploreTask` fields when no ``task`` is given.

    Returns
    -------
    ExploreResult

    Raises
    ------
    ValueError
        Bad settings or structures, unknown model name, a starting structure that
        fails the filter, or a workdir holding finished walkers of other settings;
        all raised before any MD runs.
    """
    if task is not None and settings:
        raise TypeError("give either an ExploreTask or settings, not both")
    if task is None:
        task = ExploreTask(**settings)
    if not isinstance(task, ExploreTask):
        raise TypeError(f"task must be an ExploreTask, not {type(task).__name__}")
    for ensemble in {task.ensemble(p) for p in task.pressures_GPa}:
        _md_class(ensemble)
    structures = _check_structures(structures, task)
    symbols = {s for atoms in structures for s in atoms.get_chemical_symbols()}
    spec = _parse_model(model, symbols)

    workdir = Path(workdir)
    walkers: list[_Walker] = []
    for index, (s, t, p) in enumerate(task.grid(len(structures))):
        key = _walker_key(task, index, structures[s], t, p, spec)
        directory = str(walker_dir(workdir, index))
        walkers.append(
            _Walker(index, s, structures[s], t, p, task.ensemble(p), task, spec, directory, key)
        )

    records: dict[int, dict[str, Any]] = {}
    stale = []
    for walker in walkers:
        cached = _read_finished(walker)
        if cached is False:
            stale.append(Path(walker.directory).name)
        elif cached is not None:
            records[walker.index] = cached
    if stale:
        raise ValueError(
            f"{workdir} holds finished walkers of other settings in {', '.join(stale[:5])}"
            f"{' ...' if len(stale) > 5 else ''}; use a fresh workdir"
        )
    cached = set(records)
    todo = [w for w in walkers if w.index not in cached]
    try:
        records.update(_run_all(todo, executor, progress))
    finally:
        _cache().clear()  # do not keep a model alive in this process after the run
    return _collect(walkers, records, cached)


def _check_structures(structures: Any, task: ExploreTask) -> list[Atoms]:
    if isinstance(structures, Atoms):
        structures = [structures]
    structures = list(structures)
    if not structures:
        raise ValueError("no starting structures")
    npt = any(p is not None for p in task.pressures_GPa)
    for i, atoms in enumerate(structures):
        if not isinstance(atoms, Atoms):
            raise TypeError(f"structure {i} is a {type(atoms).__name__}, not ase.Atoms")
        if len(atoms) == 0:
            raise ValueError(f"structure {i} has no atoms")
        if npt and not atoms.pbc.all():
            raise ValueError(f"structure {i} is not fully periodic: NPT needs a periodic cell")
        if npt and task.barostat == "mtk" and atoms.constraints:
            raise ValueError(f"structure {i} has constraints: the MTK barostat does not allow them")
        with np.errstate(all="ignore"):
            reason = task.frame_filter.check(_start_atoms(atoms))
        if reason is not None:
            raise ValueError(f"starting structure {i} fails the frame filter: {reason}")
    return structures


def _read_finished(walker: _Walker) -> dict[str, Any] | None | bool:
    """The completion record of a finished walker; None if unfinished, False if stale."""
    directory = Path(walker.directory)
    done = directory / DONE_FILE
    if not done.exists():
        return None
    try:
        record = read_json(done)
    except (OSError, ValueError):
        return None  # an unreadable record: run again
    if json.dumps(record.get("key"), sort_keys=True) != json.dumps(walker.key, sort_keys=True):
        return False
    if record.get("status") not in _FINISHED or not (directory / TRAJECTORY_FILE).exists():
        return None
    record.pop("key", None)
    record["directory"] = walker.directory
    return record


def _run_all(
    walkers: list[_Walker], executor: Executor | None, progress: bool
) -> Iterator[tuple[int, dict[str, Any]]]:
    def executor_failed(walker: _Walker, exc: Exception) -> dict[str, Any]:
        record = {**walker.describe(), **_failure_fields(exc), "status": "failed"}
        _write_failure(Path(walker.directory), record)
        return record

    if executor is None:  # in this process: the walkers show their own step bars
        for walker in walkers:
            walker.progress = progress
    bar = _progress_bar(progress and bool(walkers), len(walkers), "explore")
    try:
        for walker, record in run_each(_run_walker, walkers, executor, executor_failed):
            if bar is not None:
                bar.update(1)
            yield walker.index, record
    finally:
        if bar is not None:
            bar.close()


def _collect(
    walkers: list[_Walker], records: dict[int, dict[str, Any]], cached: set[int]
) -> ExploreResult:
    from pfd_ase.data import read_frames

    result = ExploreResult(filter_counts={kind: 0 for kind in REASON_KINDS}, n_cached=len(cached))
    for walker in walkers:
        record = dict(records[walker.index])
        record["cached"] = walker.index in cached
        rejected = record.pop("rejected", [])
        if record["status"] in _FINISHED:
            result.frames.extend(
                read_frames(Path(walker.directory) / TRAJECTORY_FILE, missing_ok=True)
            )
            result.rejected.extend(rejected)
            for item in rejected:
                kind = reason_kind(item["reason"])
                result.filter_counts[kind] = result.filter_counts.get(kind, 0) + 1
        result.walkers.append(record)
    return result
