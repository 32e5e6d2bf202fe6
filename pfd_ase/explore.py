"""Exploration: ASE molecular-dynamics walkers over temperature × pressure × structure grids.

:func:`explore` (or :meth:`ExploreTask.run`) starts one *walker* per combination of
starting structure, temperature and pressure and runs them through a
``concurrent.futures.Executor`` (in-process and serial when none is given). Walker
``i`` enumerates the grid structure-major: ``for structure: for T: for P``. A
pressure of ``None`` means NVT with the chosen ``thermostat`` (Langevin, Bussi,
Nosé–Hoover chain); a number means NPT with the chosen ``barostat`` (ASE's
isotropic MTK barostat with a Nosé–Hoover chain thermostat, or Berendsen).

Walker ``i`` works in ``workdir/walker.{i:04d}``:

``walker.json``
    what the directory is for (the walker's settings), written when it starts;
``traj.extxyz``
    the sampled frames, appended (full precision) as the MD runs;
``rejected.extxyz``
    sampled frames rejected by the filters, and the state at which MD blew up;
``md.log``
    ASE's MD log, one line per sampled step;
``done.json``
    the completion record, written atomically when the walker ends (status
    ``"finished"`` or ``"exploded"``);
``failure.json``
    exception and traceback when the MD raised for a reason other than a blow-up.

A rerun with the same settings skips every walker with a completion record (a
walker that crashed or failed starts again from step 0; MD is cheap next to the
DFT that follows). Velocities come from ``np.random.default_rng(SeedSequence(seed,
spawn_key=(i,)))``: one seed gives every walker its own reproducible stream,
independent of the executor and of the global NumPy seed.

Frames are sampled every ``sample_every`` steps: ``steps // sample_every`` frames
per walker that runs to the end, plus the starting structure (step 0) when
``include_initial``. They are unlabelled structures; ``atoms.info`` holds

``pfd_walker``, ``pfd_structure_index``, ``pfd_step``, ``pfd_time_fs``
    where the frame comes from;
``pfd_temperature_K``, ``pfd_pressure_GPa`` (NPT only), ``pfd_ensemble``
    the walker's conditions;
``pfd_md_temperature_K``
    the instantaneous kinetic temperature;
``pfd_model_energy``, ``pfd_model_stress`` (and ``atoms.arrays["pfd_model_forces"]``)
    the MD model's predictions, when its calculator computed them anyway;
``pfd_max_force_devi``, ``pfd_energy_devi`` (and ``atoms.arrays["pfd_force_devi"]``)
    the committee deviations of a committee :class:`~pfd_ase.calculators.PFDCalculator`.

Blow-ups are detected with :mod:`pfd_ase.selectors.filters`: non-finite
positions, energy or forces and cell limits at every step, too-close atoms every
``check_every`` steps and on every sampled frame. A blown-up walker stops, records
status ``"exploded"`` with the step and reason, and the others go on. Frames that
fail only the optional ``max_force_eV_A`` limit are rejected but the walker goes on.
Units: K, fs, GPa at the interface; eV, Å and ASE time inside.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from pfd_ase._io import read_json, write_json
from pfd_ase.selectors.filters import (
    REASON_KINDS,
    FrameFilter,
    check_finite,
    check_max_force,
    check_min_distance,
    reason_kind,
)

__all__ = [
    "BAROSTATS",
    "THERMOSTATS",
    "ExploreResult",
    "ExploreTask",
    "explore",
    "walker_dir",
]

#: NVT thermostats (walkers with pressure ``None``).
THERMOSTATS: tuple[str, ...] = ("langevin", "bussi", "nose-hoover")
#: NPT barostats (walkers with a pressure).
BAROSTATS: tuple[str, ...] = ("mtk", "berendsen")
_ALIASES = {
    "nhc": "nose-hoover",
    "nose-hoover-chain": "nose-hoover",
    "nosehoover": "nose-hoover",
    "isotropic-mtk": "mtk",
    "npt-mtk": "mtk",
    "npt-berendsen": "berendsen",
}

TASK_FILE = "walker.json"
TRAJECTORY_FILE = "traj.extxyz"
REJECTED_FILE = "rejected.extxyz"
LOG_FILE = "md.log"
DONE_FILE = "done.json"
FAILURE_FILE = "failure.json"
_FINISHED = ("finished", "exploded")


def walker_dir(workdir: str | os.PathLike, index: int) -> Path:
    """The directory of walker ``index`` under ``workdir``."""
    return Path(workdir) / f"walker.{index:04d}"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ExploreTask:
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
        NVT thermostat: ``"langevin"``, ``"bussi"`` or ``"nose-hoover"`` (chain).
    barostat
        NPT barostat: ``"mtk"`` (ASE ``IsotropicMTKNPT``) or ``"berendsen"``
        (ASE ``NPTBerendsen``, isotropic).
    seed
        Seed of every walker's random stream (velocities, Langevin and Bussi noise).
    tdamp_fs
        Thermostat time constant (fs); default 100 time steps. Langevin uses the
        friction ``1 / tdamp``.
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

    temperatures_K: Sequence[float]
    pressures_GPa: Sequence[float | None] = (None,)
    steps: int = 2000
    timestep_fs: float = 2.0
    sample_every: int = 100
    thermostat: str = "langevin"
    barostat: str = "mtk"
    seed: int = 0
    tdamp_fs: float | None = None
    pdamp_fs: float | None = None
    compressibility_per_GPa: float = 0.01
    include_initial: bool = False
    check_every: int = 1
    frame_filter: FrameFilter = field(default_factory=FrameFilter)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        temps = _as_tuple(self.temperatures_K)
        if not temps:
            raise ValueError("temperatures_K must not be empty")
        set_(self, "temperatures_K", tuple(_positive(t, "temperatures_K", "K") for t in temps))
        pressures = _as_tuple(self.pressures_GPa)
        if not pressures:
            raise ValueError("pressures_GPa must not be empty (use [None] for NVT)")
        set_(self, "pressures_GPa", tuple(_pressure(p) for p in pressures))
        set_(self, "steps", _count(self.steps, "steps"))
        set_(self, "sample_every", _count(self.sample_every, "sample_every"))
        set_(self, "check_every", _count(self.check_every, "check_every"))
        if self.sample_every > self.steps:
            raise ValueError(
                f"sample_every ({self.sample_every}) must be <= steps ({self.steps}): "
                "no frame would be sampled"
            )
        set_(self, "timestep_fs", _positive(self.timestep_fs, "timestep_fs", "fs"))
        for name in ("tdamp_fs", "pdamp_fs"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, _positive(value, name, "fs"))
        set_(
            self,
            "compressibility_per_GPa",
            _positive(self.compressibility_per_GPa, "compressibility_per_GPa", "1/GPa"),
        )
        set_(self, "thermostat", _choice(self.thermostat, THERMOSTATS, "thermostat"))
        set_(self, "barostat", _choice(self.barostat, BAROSTATS, "barostat"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, Integral) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        set_(self, "seed", int(self.seed))
        set_(self, "include_initial", bool(self.include_initial))
        flt = self.frame_filter
        if isinstance(flt, Mapping):
            flt = FrameFilter(**flt)
        if not isinstance(flt, FrameFilter):
            raise ValueError(f"frame_filter must be a FrameFilter or a dict, not {flt!r}")
        set_(self, "frame_filter", flt)

    @property
    def frames_per_walker(self) -> int:
        """Frames sampled by a walker that runs to the end (before filtering)."""
        return self.steps // self.sample_every + int(self.include_initial)

    def ensemble(self, pressure_GPa: float | None) -> str:
        """Name of the ensemble of a walker at this pressure (``nvt-langevin``, ``npt-mtk``...)."""
        return f"nvt-{self.thermostat}" if pressure_GPa is None else f"npt-{self.barostat}"

    def grid(self, n_structures: int) -> list[tuple[int, float, float | None]]:
        """``(structure_index, temperature_K, pressure_GPa)`` of every walker, in walker order."""
        return [
            (s, t, p)
            for s in range(n_structures)
            for t in self.temperatures_K
            for p in self.pressures_GPa
        ]

    def run(
        self,
        structures: Atoms | Sequence[Atoms],
        model: Any,
        workdir: str | os.PathLike,
        *,
        executor: Executor | None = None,
        progress: bool = True,
    ) -> ExploreResult:
        """Run this exploration; see :func:`explore`."""
        return explore(structures, model, workdir, self, executor=executor, progress=progress)


def _as_tuple(value: Any) -> tuple:
    if value is None or isinstance(value, str | Real):
        return (value,)
    return tuple(value)


def _positive(value: Any, name: str, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number ({unit}), got {value!r}")
    out = float(value)
    if not (out > 0 and math.isfinite(out)):
        raise ValueError(f"{name} must be positive and finite ({unit}), got {value!r}")
    return out


def _pressure(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"pressures_GPa entries must be finite numbers or None, got {value!r}")
    return float(value)


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    key = value.strip().lower().replace("_", "-") if isinstance(value, str) else None
    key = _ALIASES.get(key, key)
    if key not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")
    return key


# --------------------------------------------------------------------------- results


@dataclass
class ExploreResult:
    """Outcome of :func:`explore`.

    Attributes
    ----------
    frames
        Sampled frames that passed the filters, in walker order then step order
        (read back from the trajectories, so fresh and cached runs agree bit for bit).
    walkers
        One record per walker, in walker order: ``index``, ``directory``,
        ``structure_index``, ``temperature_K``, ``pressure_GPa``, ``ensemble``,
        ``status`` (``"finished"``, ``"exploded"`` or ``"failed"``), ``steps_done``,
        ``n_frames`` (kept frames), ``n_rejected``, ``wall_time_s``, ``cached``; an
        exploded walker adds ``exploded_step`` and ``reason``, a failed one
        ``exception``, ``message`` and ``traceback``.
    rejected
        ``{"walker", "step", "reason"}`` of every rejected frame, including the
        state at which a walker blew up.
    filter_counts
        Rejected frames per reason kind (``non_finite``, ``cell``, ``too_close``,
        ``max_force``).
    n_cached
        Walkers whose results came from a previous run.
    """

    frames: list[Atoms] = field(default_factory=list)
    walkers: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    filter_counts: dict[str, int] = field(default_factory=dict)
    n_cached: int = 0

    @property
    def exploded(self) -> list[dict[str, Any]]:
        """Records of the walkers that blew up."""
        return [w for w in self.walkers if w["status"] == "exploded"]

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Records of the walkers whose MD raised an exception."""
        return [w for w in self.walkers if w["status"] == "failed"]


# --------------------------------------------------------------------------- model spec


@dataclass
class _Model:
    """How a walker gets its calculator; picklable when ``obj`` is."""

    kind: str  # "labeler", "pfd", "object" or "factory"
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    obj: Any = None
    key: Any = None


def _parse_model(model: Any, symbols: Iterable[str]) -> _Model:
    """Check the model spec (cheaply) and describe it."""
    from pfd_ase.calculators.labelers import (
        _canonical_name,
        _jsonable,
        check_labeler,
        is_calculator,
        labeler_info,
    )

    if isinstance(model, str):
        model = (model, {})
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], str):
        name, options = model[0].strip().lower(), dict(model[1] or {})
        if name == "pfd":
            if "model" not in options:
                raise ValueError('a ("pfd", options) model needs options["model"], a model path')
            paths = options["model"]
            paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
            for path in paths:
                if not Path(path).exists():
                    raise FileNotFoundError(f"model file {path} does not exist")
            key = {"pfd": _jsonable(options)}
            return _Model("pfd", name, options, key=key)
        name = _canonical_name(name)  # ValueError for unknown names
        options.pop("directory", None)
        check_labeler(name, symbols, options)
        return _Model("labeler", name, options, key={"name": name, "options": _jsonable(options)})
    if is_calculator(model):
        return _Model("object", obj=model, key={"object": labeler_info(model)})
    if callable(model):
        return _Model("factory", obj=model, key={"factory": _callable_key(model)})
    raise TypeError(
        "model must be a labeler name, a (name, options) pair, ('pfd', {'model': path, ...}), "
        f"a calculator object or a calculator factory, not {type(model).__name__}"
    )


def _callable_key(func: Any) -> Any:
    import functools

    from pfd_ase.calculators.labelers import _jsonable

    if isinstance(func, functools.partial):
        return {
            "func": _callable_key(func.func),
            "args": _jsonable(list(func.args)),
            "kwargs": _jsonable(dict(func.keywords)),
        }
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


_LOCAL = threading.local()


def _cache() -> dict[str, Any]:
    if not hasattr(_LOCAL, "built"):
        _LOCAL.built = {}
    return _LOCAL.built


def _build(model: _Model) -> Any:
    if model.kind == "object":
        return model.obj
    if model.kind == "factory":
        return model.obj()
    if model.kind == "pfd":
        from pfd_ase.calculators.pfd import PFDCalculator

        return PFDCalculator(**model.options)
    from pfd_ase.calculators.labelers import make_labeler

    return make_labeler(model.name, **model.options)


@contextmanager
def _calculator(model: _Model) -> Iterator[Any]:
    """The walker's calculator: built once per process and thread (one kept), reset."""
    if model.kind == "object":
        calc = model.obj
    else:
        try:
            key = json.dumps([model.kind, model.key], sort_keys=True)
        except TypeError:
            key = None
        cache = _cache()
        if key is not None and key in cache:
            calc = cache[key]
        else:
            cache.clear()
            calc = _build(model)
            if key is not None:
                cache[key] = calc
    if callable(getattr(calc, "reset", None)):
        calc.reset()
    yield calc


# --------------------------------------------------------------------------- walkers


@dataclass
class _Walker:
    index: int
    structure_index: int
    structure: Atoms
    temperature_K: float
    pressure_GPa: float | None
    ensemble: str
    task: ExploreTask
    model: _Model
    directory: str
    key: dict[str, Any]
    progress: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "directory": self.directory,
            "structure_index": self.structure_index,
            "temperature_K": self.temperature_K,
            "pressure_GPa": self.pressure_GPa,
            "ensemble": self.ensemble,
        }


def _walker_key(task: ExploreTask, index: int, structure: Atoms, t, p, model: _Model) -> dict:
    from pfd_ase.calculators.labelers import _jsonable
    from pfd_ase.data import frame_fingerprint

    settings = {f.name: getattr(task, f.name) for f in fields(task)}
    settings.pop("temperatures_K")
    settings.pop("pressures_GPa")
    settings["frame_filter"] = asdict(task.frame_filter)
    key = {
        "index": index,
        "structure": frame_fingerprint(structure),
        "temperature_K": t,
        "pressure_GPa": p,
        "ensemble": task.ensemble(p),
        "settings": settings,
        "model": model.key,
    }
    return json.loads(json.dumps(_jsonable(key), sort_keys=True))


def _run_walker(walker: _Walker) -> dict[str, Any]:
    """Run one walker in its directory; return its record (also written to disk)."""
    directory = Path(walker.directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in (DONE_FILE, FAILURE_FILE, TRAJECTORY_FILE, REJECTED_FILE, LOG_FILE):
        (directory / name).unlink(missing_ok=True)
    write_json(directory / TASK_FILE, {"key": walker.key, **walker.describe()})
    start = time.perf_counter()
    record = walker.describe()
    try:
        with _calculator(walker.model) as calc, np.errstate(all="ignore"):
            record.update(_run_md(walker, calc, directory))
    except Exception as exc:
        _cache().clear()  # the next walker starts from a fresh calculator
        record.update(_failure_fields(exc), status="failed")
        record["wall_time_s"] = time.perf_counter() - start
        _write_failure(directory, record)
        return record
    record["wall_time_s"] = time.perf_counter() - start
    write_json(directory / DONE_FILE, {"key": walker.key, **record})
    return record


def _failure_fields(exc: BaseException) -> dict[str, Any]:
    return {
        "exception": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "steps_done": 0,
        "n_frames": 0,
        "n_rejected": 0,
    }


def _write_failure(directory: Path, record: dict[str, Any]) -> None:
    try:
        write_json(directory / FAILURE_FILE, record)
    except OSError:  # the record in ExploreResult.walkers remains
        pass


def _start_atoms(structure: Atoms) -> Atoms:
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
    "npt-mtk": ("ase.md.nose_hoover_chain", "IsotropicMTKNPT"),
    "npt-berendsen": ("ase.md.nptberendsen", "NPTBerendsen"),
}


def _md_class(ensemble: str) -> type:
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


def _dynamics(atoms: Atoms, walker: _Walker, rng: np.random.Generator) -> Any:
    from ase import units

    task = walker.task
    cls = _md_class(walker.ensemble)
    dt = task.timestep_fs * units.fs
    tdamp = (task.tdamp_fs or 100.0 * task.timestep_fs) * units.fs
    pdamp = (task.pdamp_fs or 1000.0 * task.timestep_fs) * units.fs
    temp = walker.temperature_K
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


def _run_md(walker: _Walker, calc: Any, directory: Path) -> dict[str, Any]:
    from ase.md import velocitydistribution as vd

    from pfd_ase.data import _write_frame

    task, flt = walker.task, walker.task.frame_filter
    rng = np.random.default_rng(np.random.SeedSequence(task.seed, spawn_key=(walker.index,)))
    atoms = _start_atoms(walker.structure)
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
    rejected: list[dict[str, Any]] = []
    bar = _progress_bar(walker.progress, task.steps, f"walker {walker.index}", leave=False)
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
                _append(_write_frame, rejects, frame)
                rejected.append({"walker": walker.index, "step": step, "reason": reason})
                out.update(status="exploded", exploded_step=step, reason=reason)
                break
            if sampled:
                frame = _snapshot(atoms, walker, step)
                soft = check_max_force(frame, flt.max_force_eV_A)
                if soft is None:
                    _append(_write_frame, traj, frame)
                    out["n_frames"] += 1
                else:
                    frame.info["pfd_reject_reason"] = soft
                    _append(_write_frame, rejects, frame)
                    rejected.append({"walker": walker.index, "step": step, "reason": soft})
            if bar is not None and step > 0:
                bar.update(1)
    out["n_rejected"] = len(rejected)
    out["rejected"] = rejected
    return out


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


def _snapshot(atoms: Atoms, walker: _Walker, step: int, with_results: bool = True) -> Atoms:
    """The sampled frame: the structure, the walker's metadata and the model's cached results
    (``with_results``: they belong to this state)."""
    from pfd_ase.calculators.pfd import ENERGY_DEVI_KEY, FORCE_DEVI_KEY, MAX_FORCE_DEVI_KEY

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
    for key in (MAX_FORCE_DEVI_KEY, ENERGY_DEVI_KEY):
        if with_results and key in atoms.info:
            info[key] = float(atoms.info[key])
    if with_results and FORCE_DEVI_KEY in atoms.arrays:
        frame.arrays[FORCE_DEVI_KEY] = np.array(atoms.arrays[FORCE_DEVI_KEY], dtype=float)
    return frame


def _progress_bar(enabled: bool, total: int, desc: str, leave: bool = True) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=leave, unit="step" if not leave else "walker")


# --------------------------------------------------------------------------- driver


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
    bar = _progress_bar(progress and bool(walkers), len(walkers), "explore")
    try:
        if executor is None:
            for walker in walkers:
                walker.progress = progress
                yield walker.index, _run_walker(walker)
                if bar is not None:
                    bar.update(1)
            return
        futures: dict[Future, _Walker] = {executor.submit(_run_walker, w): w for w in walkers}
        try:
            for future in as_completed(futures):
                walker = futures[future]
                try:
                    record = future.result()
                except Exception as exc:  # the executor failed (pickling, a dead worker)
                    record = {**walker.describe(), **_failure_fields(exc), "status": "failed"}
                    _write_failure(Path(walker.directory), record)
                if bar is not None:
                    bar.update(1)
                yield walker.index, record
        finally:
            for future in futures:
                future.cancel()
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
