"""Run an exploration: :class:`ExploreTask`, :func:`explore`; walkers, finished ones, frames."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from pfd_ase._io import read_json
from pfd_ase.data import read_frames
from pfd_ase.explore.results import (
    DONE_FILE,
    FINISHED,
    TRAJECTORY_FILE,
    ExploreResult,
    walker_dir,
)
from pfd_ase.explore.settings import DHWatch, ExploreSettings, as_dh_watch
from pfd_ase.explore.walker import (
    Walker,
    md_class,
    progress_bar,
    run_walker,
    start_atoms,
    walker_definition,
    walker_failure,
)
from pfd_ase.selectors.filters import REASON_KINDS, reason_kind
from pfd_ase.tasks import (
    calculator_spec,
    clear_calculators,
    run_each,
    split_finished,
    task_key,
    write_failure,
)

__all__ = ["ExploreTask", "explore", "run_exploration"]

_MISMATCH = "finished walkers of other settings"


class ExploreTask(ExploreSettings):
    """Settings of one exploration; validated on construction (``ValueError``).

    Parameters
    ----------
    temperatures_K
        Temperatures of the grid (K, > 0); a number means one temperature.
    pressures_GPa
        Pressures of the grid (GPa); ``None`` in the list is an NVT walker.
    steps
        MD steps per walker.
    timestep_fs
        MD time step (fs).
    sample_every
        A frame every this many steps (``<= steps``).
    thermostat
        Thermostat of the walkers with pressure ``None``: ``"langevin"``, ``"bussi"``
        or ``"nose-hoover"`` (chain) for NVT; ``"nve"`` (or ``"none"``) for NVE with
        ASE's Velocity Verlet, from the Maxwell-Boltzmann momenta at the walker's
        temperature (total momentum zero), so the MD temperature settles near half
        of it in a crystal (equipartition with the potential energy).
    barostat
        NPT barostat: ``"mtk"`` (ASE ``IsotropicMTKNPT``) or ``"berendsen"``
        (ASE ``NPTBerendsen``, isotropic).
    seed
        Seed of every walker's random stream (velocities, Langevin and Bussi noise).
    tdamp_fs
        Thermostat time constant (fs); default 100 time steps. Langevin uses the
        friction ``1 / tdamp``; NVE ignores it.
    pdamp_fs
        Barostat time constant (fs); default 1000 time steps.
    compressibility_per_GPa
        Compressibility assumed by the Berendsen barostat (1/GPa).
    include_initial
        Also sample the starting structure (step 0).
    check_every
        Check for too-close atoms every this many steps (and on every sampled
        frame); non-finite values and the cell are checked every step.
    frame_filter
        Limits of the blow-up checks and of the frame filter (a
        :class:`~pfd_ase.selectors.filters.FrameFilter` or a dict of its fields).
    """

    def run(
        self,
        structures: Atoms | Sequence[Atoms],
        model: Any,
        workdir: str | os.PathLike,
        *,
        executor: Executor | None = None,
        progress: bool = True,
        dh_watch: DHWatch | Mapping[str, Any] | None = None,
    ) -> ExploreResult:
        """Run this exploration; see :func:`explore`."""
        return run_exploration(
            self,
            structures,
            model,
            workdir,
            executor=executor,
            progress=progress,
            dh_watch=dh_watch,
        )


def explore(
    structures: Atoms | Sequence[Atoms],
    model: Any,
    workdir: str | os.PathLike,
    task: ExploreTask | None = None,
    *,
    executor: Executor | None = None,
    progress: bool = True,
    dh_watch: DHWatch | Mapping[str, Any] | None = None,
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
    dh_watch
        Watch the walkers' dH against a training set's descriptor bank: a
        :class:`~pfd_ase.explore.DHWatch` or a dict of its fields (``bank``, ``max_dH``,
        ``action``, ``every``); sampled frames carry their dH, and frames over the
        threshold are marked, or stop their walker (status ``"stopped"``).
    **settings
        :class:`ExploreTask` fields when no ``task`` is given.

    Returns
    -------
    ExploreResult

    Raises
    ------
    ValueError
        Bad settings or structures, unknown model name, a bad dH watch (its bank is
        read here), a starting structure that fails the filter, or a workdir holding
        finished walkers of other settings (:class:`~pfd_ase.tasks.MismatchedTaskError`);
        all raised before any MD runs.

    Warns
    -----
    StaleRecordWarning
        A walker's ``done.json`` that cannot be read or is incomplete was moved aside to
        ``done.json.stale``; the walker runs again.
    """
    if task is not None and settings:
        raise TypeError("give either an ExploreTask or settings, not both")
    if task is None:
        task = ExploreTask(**settings)
    if not isinstance(task, ExploreTask):
        raise TypeError(f"task must be an ExploreTask, not {type(task).__name__}")
    return run_exploration(
        task, structures, model, workdir, executor=executor, progress=progress, dh_watch=dh_watch
    )


def run_exploration(
    task: ExploreSettings,
    structures: Atoms | Sequence[Atoms],
    model: Any,
    workdir: str | os.PathLike,
    *,
    executor: Executor | None = None,
    progress: bool = True,
    dh_watch: DHWatch | Mapping[str, Any] | None = None,
) -> ExploreResult:
    """Run the exploration ``task``; see :func:`pfd_ase.explore.explore`.

    Everything is checked (ensembles, structures, model, dH watch, existing walker
    directories) before the first walker starts.
    """
    dh_watch = as_dh_watch(dh_watch)
    for ensemble in {task.ensemble(p) for p in task.pressures_GPa}:
        md_class(ensemble)
    structures = _check_structures(structures, task)
    spec = calculator_spec(model, what="model")
    spec.check({s for atoms in structures for s in atoms.get_chemical_symbols()})

    workdir = Path(workdir)
    walkers: list[Walker] = []
    for index, (s, t, p) in enumerate(task.grid(len(structures))):
        definition = walker_definition(task, index, structures[s], t, p, spec, dh_watch)
        walkers.append(
            Walker(
                index=index,
                structure_index=s,
                structure=structures[s],
                temperature_K=t,
                pressure_GPa=p,
                ensemble=task.ensemble(p),
                task=task,
                model=spec,
                directory=str(walker_dir(workdir, index)),
                key=task_key(definition),
                definition=definition,
                dh_watch=dh_watch,
            )
        )
    records, todo = split_finished(
        walkers, DONE_FILE, _read_done, workdir=workdir, what=_MISMATCH, check=_check_done
    )
    cached = set(records)
    for i in cached:
        records[i]["directory"] = walkers[i].directory
    try:
        records.update(_run_all(todo, executor, progress))
    finally:
        clear_calculators()  # do not keep a model alive in this process after the run
    return _collect(walkers, records, cached)


def _check_structures(structures: Any, task: ExploreSettings) -> list[Atoms]:
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
            reason = task.frame_filter.check(start_atoms(atoms))
        if reason is not None:
            raise ValueError(f"starting structure {i} fails the frame filter: {reason}")
    return structures


def _read_done(directory: Path) -> tuple[str, dict[str, Any]]:
    """Key and record of a walker's done record (any exception: unreadable)."""
    record = read_json(directory / DONE_FILE)
    key = record.pop("key")
    if isinstance(key, dict):  # written before keys were hashed: the whole definition
        key = task_key(key)
    return key, record


def _check_done(directory: Path, record: dict[str, Any]) -> None:
    """A done record with the right key is complete: a final status and a trajectory."""
    if record.get("status") not in FINISHED:
        raise ValueError(f"status {record.get('status')!r} is not one of {FINISHED}")
    if not (directory / TRAJECTORY_FILE).exists():
        raise FileNotFoundError(f"no {TRAJECTORY_FILE}")


def _run_all(
    walkers: list[Walker], executor: Executor | None, progress: bool
) -> Iterator[tuple[int, dict[str, Any]]]:
    def executor_failed(walker: Walker, exc: Exception) -> dict[str, Any]:
        record = walker_failure(walker, exc)
        write_failure(walker.directory, record)
        return record

    if executor is None:  # in this process: the walkers show their own step bars
        for walker in walkers:
            walker.progress = progress
    bar = progress_bar(progress and bool(walkers), len(walkers), "explore")
    try:
        for walker, record in run_each(run_walker, walkers, executor, executor_failed):
            if bar is not None:
                bar.update(1)
            yield walker.index, record
    finally:
        if bar is not None:
            bar.close()


def _collect(
    walkers: list[Walker], records: dict[int, dict[str, Any]], cached: set[int]
) -> ExploreResult:
    result = ExploreResult(filter_counts={kind: 0 for kind in REASON_KINDS}, n_cached=len(cached))
    for walker in walkers:
        record = dict(records[walker.index])
        record["cached"] = walker.index in cached
        rejected = record.pop("rejected", [])
        if record["status"] in FINISHED:
            result.frames.extend(
                read_frames(Path(walker.directory) / TRAJECTORY_FILE, missing_ok=True)
            )
            result.rejected.extend(rejected)
            for item in rejected:
                kind = reason_kind(item["reason"])
                result.filter_counts[kind] = result.filter_counts.get(kind, 0) + 1
        result.walkers.append(record)
    return result
