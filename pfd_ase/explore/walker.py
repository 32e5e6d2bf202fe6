"""One MD walker in its directory: ensembles, blow-up checks, sampled frames."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from pfd_ase.explore.results import (
    DH_EXCEEDED_KEY,
    DONE_FILE,
    LOG_FILE,
    REJECTED_FILE,
    TASK_FILE,
    TRAJECTORY_FILE,
)
from pfd_ase.explore.settings import DHWatch, ExploreSettings
from pfd_ase.selectors.filters import check_finite, check_max_force, check_min_distance
from pfd_ase.tasks import (
    CalculatorSpec,
    calculator,
    canonical_definition,
    clear_calculators,
    failure_record,
    start_task,
    write_done,
    write_failure,
)

__all__ = [
    "Walker",
    "md_class",
    "progress_bar",
    "run_walker",
    "start_atoms",
    "walker_definition",
    "walker_failure",
]


@dataclass
class Walker:
    """One walker of an exploration: its conditions, model and directory (picklable).

    Attributes
    ----------
    index, structure_index, structure, temperature_K, pressure_GPa, ensemble
        Position in the grid and conditions.
    task
        The exploration's settings.
    model
        How the walker gets its calculator.
    directory
        The walker's directory.
    key
        The task key (:func:`pfd_ase.tasks.task_key` of ``definition``).
    definition
        What defines the walker (:func:`walker_definition`), written to its task record.
    progress
        Show a progress bar of the steps (serial runs).
    dh_watch
        The run's dH watch, if any.
    """

    index: int
    structure_index: int
    structure: Atoms
    temperature_K: float
    pressure_GPa: float | None
    ensemble: str
    task: ExploreSettings
    model: CalculatorSpec
    directory: str
    key: str
    definition: dict[str, Any]
    progress: bool = False
    dh_watch: DHWatch | None = None

    def describe(self) -> dict[str, Any]:
        """The fields that start every walker record."""
        return {
            "index": self.index,
            "directory": self.directory,
            "structure_index": self.structure_index,
            "temperature_K": self.temperature_K,
            "pressure_GPa": self.pressure_GPa,
            "ensemble": self.ensemble,
        }


def walker_definition(
    task: ExploreSettings,
    index: int,
    structure: Atoms,
    temperature_K: float,
    pressure_GPa: float | None,
    model: CalculatorSpec,
    dh_watch: DHWatch | None = None,
) -> dict[str, Any]:
    """What defines walker ``index`` (in canonical JSON form): its structure's
    fingerprint, conditions, every setting that changes its MD (the grid aside), the
    model's description and the dH watch's (only when there is one, so that the keys of
    walkers without one stay as they were)."""
    from pfd_ase.data import frame_fingerprint

    settings = {f.name: getattr(task, f.name) for f in fields(task)}
    settings.pop("temperatures_K")
    settings.pop("pressures_GPa")
    settings["frame_filter"] = asdict(task.frame_filter)
    definition = {
        "index": index,
        "structure": frame_fingerprint(structure),
        "temperature_K": temperature_K,
        "pressure_GPa": pressure_GPa,
        "ensemble": task.ensemble(pressure_GPa),
        "settings": settings,
        "model": model.description,
    }
    if dh_watch is not None:
        definition["dh_watch"] = dh_watch.describe()
    return canonical_definition(definition)


def run_walker(walker: Walker) -> dict[str, Any]:
    """Run one walker in its directory; return its record (also written to disk)."""
    directory = start_task(
        walker.directory,
        TASK_FILE,
        walker.key,
        {**walker.describe(), "definition": walker.definition},
        clear=(DONE_FILE, TRAJECTORY_FILE, REJECTED_FILE, LOG_FILE),
    )
    start = time.perf_counter()
    record = walker.describe()
    try:
        with calculator(walker.model) as calc, np.errstate(all="ignore"):
            record.update(_run_md(walker, calc, directory))
    except Exception as exc:
        clear_calculators()  # the next walker starts from a fresh calculator
        record = walker_failure(walker, exc)
        record["wall_time_s"] = time.perf_counter() - start
        write_failure(directory, record)
        return record
    record["wall_time_s"] = time.perf_counter() - start
    write_done(directory, DONE_FILE, walker.key, record)
    return record


def walker_failure(walker: Walker, exc: BaseException) -> dict[str, Any]:
    """The record of a walker whose MD raised ``exc`` (or that the executor lost)."""
    return {
        **walker.describe(),
        **failure_record(exc),
        "status": "failed",
        "steps_done": 0,
        "n_frames": 0,
        "n_rejected": 0,
    }


def start_atoms(structure: Atoms) -> Atoms:
    """A clean copy of a starting structure: no calculator, labels or old momenta."""
    atoms = structure.copy()
    atoms.calc = None
    atoms.info = {}
    for key in list(atoms.arrays):
        if key not in ("numbers", "positions", "masses", "tags"):
            del atoms.arrays[key]
    return atoms


#: The ASE class behind each ensemble (module, name).
_MD_CLASSES = {
    "nvt-langevin": ("ase.md.langevin", "Langevin"),
    "nvt-bussi": ("ase.md.bussi", "Bussi"),
    "nvt-nose-hoover": ("ase.md.nose_hoover_chain", "NoseHooverChainNVT"),
    "nve": ("ase.md.verlet", "VelocityVerlet"),
    "npt-mtk": ("ase.md.nose_hoover_chain", "IsotropicMTKNPT"),
    "npt-berendsen": ("ase.md.nptberendsen", "NPTBerendsen"),
}


def md_class(ensemble: str) -> type:
    """The ASE dynamics class of an ensemble; ValueError if this ASE lacks it."""
    import importlib

    import ase

    module, name = _MD_CLASSES[ensemble]
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ValueError(
            f"ensemble {ensemble!r} needs {module}.{name}, which ase {ase.__version__} lacks; "
            "upgrade ase or choose another thermostat/barostat"
        ) from None


def _dynamics(atoms: Atoms, walker: Walker, rng: np.random.Generator) -> Any:
    from ase import units

    task = walker.task
    cls = md_class(walker.ensemble)
    dt = task.timestep_fs * units.fs
    tdamp = (task.tdamp_fs or 100.0 * task.timestep_fs) * units.fs
    pdamp = (task.pdamp_fs or 1000.0 * task.timestep_fs) * units.fs
    temp = walker.temperature_K
    if walker.ensemble == "nve":  # momenta already drawn at temp, total momentum zero
        return cls(atoms, dt)
    if walker.ensemble == "nvt-langevin":
        from ase.constraints import FixCom

        if not atoms.constraints:  # ASE's advice instead of the deprecated fixcm=True
            atoms.set_constraint(FixCom())
        return cls(atoms, dt, temperature_K=temp, friction=1.0 / tdamp, fixcm=False, rng=rng)
    if walker.ensemble == "nvt-bussi":
        return cls(atoms, dt, temperature_K=temp, taut=tdamp, rng=rng)
    if walker.ensemble == "nvt-nose-hoover":
        return cls(atoms, dt, temperature_K=temp, tdamp=tdamp)
    pressure_au = walker.pressure_GPa * units.GPa
    if walker.ensemble == "npt-mtk":
        return cls(atoms, dt, temperature_K=temp, pressure_au=pressure_au, tdamp=tdamp, pdamp=pdamp)
    return cls(
        atoms,
        dt,
        temperature_K=temp,
        pressure_au=pressure_au,
        taut=tdamp,
        taup=pdamp,
        compressibility_au=task.compressibility_per_GPa / units.GPa,
    )


def _run_md(walker: Walker, calc: Any, directory: Path) -> dict[str, Any]:
    from ase.md import velocitydistribution as vd

    from pfd_ase.data import write_frame

    task, flt = walker.task, walker.task.frame_filter
    rng = np.random.default_rng(np.random.SeedSequence(task.seed, spawn_key=(walker.index,)))
    atoms = start_atoms(walker.structure)
    atoms.calc = calc
    reference_cell = atoms.cell.array.copy()
    thermalize = getattr(vd, "thermalize_momenta", None)  # ase >= 3.29
    if thermalize is None:
        thermalize = vd.MaxwellBoltzmannDistribution
    thermalize(atoms, temperature_K=walker.temperature_K, rng=rng)
    vd.Stationary(atoms)
    dyn = _dynamics(atoms, walker, rng)

    def state_reason(full: bool) -> str | None:
        reason = check_finite(atoms) or flt.check_cell(atoms, reference_cell)
        if reason is None and full:
            reason = check_min_distance(atoms, flt.distance_factor, flt.safe_distances)
        return reason

    out: dict[str, Any] = {"status": "finished", "n_frames": 0, "n_rejected": 0}
    watch = _DHCheck(walker.dh_watch, task.sample_every) if walker.dh_watch else None
    rejected: list[dict[str, Any]] = []
    bar = progress_bar(walker.progress, task.steps, f"walker {walker.index}", leave=False)
    with (
        _closing(bar),
        open(directory / TRAJECTORY_FILE, "w") as traj,
        open(directory / REJECTED_FILE, "w") as rejects,
        open(directory / LOG_FILE, "w") as log,
    ):
        from ase.md import MDLogger

        dyn.attach(MDLogger(dyn, atoms, log), interval=task.sample_every)
        steps = dyn.irun(task.steps)
        started = False  # irun yields once for step 0, then after every step
        while True:
            try:
                next(steps)
            except StopIteration:
                break
            except Exception:  # the MD step raised: a blow-up if the state is unphysical
                reason = state_reason(full=True)
                if reason is None:
                    raise
                step, current = dyn.nsteps + int(started), False
            else:
                step, current, started = dyn.nsteps, True, True
                sampled = step % task.sample_every == 0 and (step > 0 or task.include_initial)
                reason = state_reason(full=sampled or step % task.check_every == 0)
            out["steps_done"] = step
            if reason is not None:
                frame = _snapshot(atoms, walker, step, with_results=current)
                frame.info["pfd_reject_reason"] = reason
                _append(write_frame, rejects, frame)
                rejected.append({"walker": walker.index, "step": step, "reason": reason})
                out.update(status="exploded", exploded_step=step, reason=reason)
                break
            dh = watch.check(atoms, step, sampled) if watch is not None else None
            stop = dh is not None and watch.stops(dh)
            if sampled or stop:
                frame = _snapshot(atoms, walker, step)
                if dh is not None:
                    watch.label(frame, dh)
                soft = check_max_force(frame, flt.max_force_eV_A)
                if soft is None:
                    _append(write_frame, traj, frame)
                    out["n_frames"] += 1
                else:
                    frame.info["pfd_reject_reason"] = soft
                    _append(write_frame, rejects, frame)
                    rejected.append({"walker": walker.index, "step": step, "reason": soft})
            if bar is not None and step > 0:
                bar.update(1)
            if stop:
                reason = f"max dH {float(dh.max()):.3g} > {watch.watch.max_dH:g} nats"
                out.update(status="stopped", stopped_step=step, reason=reason)
                break
    if watch is not None:
        out["dH"] = watch.record()
    out["n_rejected"] = len(rejected)
    out["rejected"] = rejected
    return out


class _DHCheck:
    """A walker's use of its :class:`DHWatch`: when to check, what to record."""

    def __init__(self, watch: DHWatch, sample_every: int) -> None:
        self.watch = watch
        self.every = watch.every
        self.checks = 0
        self.max_seen = -np.inf
        self.n_exceeded = 0
        self.first_exceeded: int | None = None

    def check(self, atoms: Atoms, step: int, sampled: bool) -> np.ndarray | None:
        """Per-atom dH of the state at ``step`` if it is checked (sampled, or every
        ``every`` steps after step 0), else None."""
        if not (sampled or (self.every and step > 0 and step % self.every == 0)):
            return None
        dh = self.watch.bank.delta_entropy(atoms)
        worst = float(dh.max()) if len(dh) else -np.inf
        self.checks += 1
        self.max_seen = max(self.max_seen, worst)
        if self.watch.exceeded(worst):
            self.n_exceeded += 1
            if self.first_exceeded is None:
                self.first_exceeded = step
        return dh

    def stops(self, dh: np.ndarray) -> bool:
        return self.watch.action == "stop" and len(dh) > 0 and self.watch.exceeded(dh.max())

    def label(self, frame: Atoms, dh: np.ndarray) -> None:
        """Put the dH of this state on its frame (and the mark, with a threshold)."""
        from pfd_ase.selectors.bank import DH_KEY, MAX_DH_KEY

        worst = float(dh.max()) if len(dh) else -np.inf
        frame.arrays[DH_KEY] = np.array(dh, dtype=float)
        frame.info[MAX_DH_KEY] = worst
        if self.watch.max_dH is not None:
            frame.info[DH_EXCEEDED_KEY] = bool(self.watch.exceeded(worst))

    def record(self) -> dict[str, Any]:
        """The walker record's ``dH`` entry (non-finite values as strings, as JSON lacks them)."""
        worst = self.max_seen
        return {
            "checks": self.checks,
            "max_dH": worst if np.isfinite(worst) else (None if worst < 0 else "inf"),
            "n_exceeded": self.n_exceeded,
            "first_exceeded_step": self.first_exceeded,
        }


@contextmanager
def _closing(bar: Any) -> Iterator[None]:
    try:
        yield
    finally:
        if bar is not None:
            bar.close()


def _append(write: Callable, fh: Any, frame: Atoms) -> None:
    write(fh, frame)
    fh.flush()


def _snapshot(atoms: Atoms, walker: Walker, step: int, with_results: bool = True) -> Atoms:
    """The sampled frame: the structure, the walker's metadata and the model's cached results
    (``with_results``: they belong to this state)."""
    from pfd_ase.calculators.pfd import ENERGY_DEVI_KEY, FORCE_DEVI_KEY, MAX_FORCE_DEVI_KEY
    from pfd_ase.selectors.bank import DH_KEY, MAX_DH_KEY

    frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    info = frame.info
    info["pfd_walker"] = walker.index
    info["pfd_structure_index"] = walker.structure_index
    info["pfd_step"] = step
    info["pfd_time_fs"] = step * walker.task.timestep_fs
    info["pfd_temperature_K"] = walker.temperature_K
    if walker.pressure_GPa is not None:
        info["pfd_pressure_GPa"] = walker.pressure_GPa
    info["pfd_ensemble"] = walker.ensemble
    info["pfd_md_temperature_K"] = float(atoms.get_temperature())
    results = (getattr(atoms.calc, "results", None) or {}) if with_results else {}
    if "energy" in results:
        info["pfd_model_energy"] = float(results["energy"])
    if "stress" in results and atoms.pbc.all():
        stress = np.asarray(results["stress"], dtype=float)
        if stress.shape == (6,):
            info["pfd_model_stress"] = stress.copy()
    if "forces" in results:
        frame.arrays["pfd_model_forces"] = np.array(results["forces"], dtype=float)
    for key in (MAX_FORCE_DEVI_KEY, ENERGY_DEVI_KEY, MAX_DH_KEY):  # committee; DHMonitor
        if with_results and key in atoms.info:
            info[key] = float(atoms.info[key])
    for key in (FORCE_DEVI_KEY, DH_KEY):
        if with_results and key in atoms.arrays:
            frame.arrays[key] = np.array(atoms.arrays[key], dtype=float)
    return frame


def progress_bar(enabled: bool, total: int, desc: str, leave: bool = True) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=leave, unit="step" if not leave else "walker")
