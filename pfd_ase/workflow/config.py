"""Run configuration: loading (YAML/JSON/dict), the typed settings, validation.

A configuration is a nested dict described by :data:`~pfd_ase.workflow.schema.SCHEMA`
(every key, its one default and a one-line description; rendered as commented YAML by
:func:`~pfd_ase.workflow.schema.default_config_text`). Every key must be known (a misspelt
or unit-less key such as ``temperature`` instead of ``temperatures_K`` is an error naming
the close match).

The settings the steps consume are typed (:class:`StageConfig`, :class:`DistillConfig`,
:class:`InitConfig`, :class:`TrainConfig`) and validate themselves on construction, once:
the MD settings of a stage are an :class:`~pfd_ase.explore.ExploreTask` (its fields, their
defaults and its validation; the YAML name of ``steps`` is ``md_steps``), the frame filter
its :class:`~pfd_ase.selectors.filters.FrameFilter` (``frame_filter:`` in YAML).
:func:`load_config` merges the defaults, builds the typed settings (any problem is a
:class:`ConfigError` naming the key), checks that the structures referenced exist, that
the elements are in the base model's type map and that the labeler is set up.

Beyond the types and signs, :func:`validate` refuses MD settings outside the physically
plausible ranges of :data:`~pfd_ase.workflow.schema.PLAUSIBLE_RANGES` (a time step in ps, a
pressure in bar), overlapping atoms in a start structure, a student whose neighbour limit
``sel`` is below the neighbours measured within its cut-off in one of its structures, and a
run directory that holds a run labelled with another labeler (rerunning would discard every
label). Shorthands: ``labeler: gpaw`` is ``{name: gpaw}``, ``base_model: chgnet`` is
``{path: chgnet}`` and a structure given as a plain path is ``{file: path}``. Problems that
do not stop a run (a student ``sel`` with less than 10 % headroom) are a
:class:`ConfigWarning`.

``config["structures"][name]`` is a structure spec (``bulk``/``file`` ...; see
:func:`pfd_ase.structures.build_structure`) or, from Python, an :class:`ase.Atoms`
(the workflow writes it to ``workdir/structures/<name>.extxyz``).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase import Atoms

from pfd_ase.explore import DH_ACTIONS, ExploreTask
from pfd_ase.parallel import KINDS
from pfd_ase.selectors.filters import FrameFilter
from pfd_ase.workflow.schema import (
    DEFAULTS,
    EXPLORE_KEYS,
    PLAUSIBLE_RANGES,
    SCHEMA,
    STAGE_DEFAULTS,
    default_config_text,
    key_names,
    schema_defaults,
)

__all__ = [
    "DEFAULTS",
    "EXPLORE_KEYS",
    "SCHEMA",
    "STAGE_DEFAULTS",
    "ConfigError",
    "ConfigWarning",
    "DistillConfig",
    "InitConfig",
    "StageConfig",
    "TrainConfig",
    "default_config_text",
    "distill_config",
    "finetune_stages",
    "init_config",
    "load_config",
    "structure_atoms",
    "student_training",
    "teacher_training",
    "validate",
    "workdir_changes",
]


class ConfigError(ValueError):
    """A configuration problem, found before any expensive work starts."""


class ConfigWarning(UserWarning):
    """A configuration that runs but probably not as meant (the message says why)."""


#: Sections that may be given as one value: ``labeler: gpaw`` is ``{name: gpaw}``.
_SHORTHANDS = {"labeler": "name", "base_model": "path"}
#: What drives the distillation MD after its first iteration (:class:`DistillConfig`).
DISTILL_DRIVERS = ("teacher", "student")
#: Headroom wanted over the neighbours measured in the student's structures (deepmd-kit's
#: own ``sel: auto`` takes 10 % over the largest count in the data).
_SEL_HEADROOM = 1.1
#: Two atoms nearer than this fraction of the sum of their covalent radii overlap.
_OVERLAP_FACTOR = 0.5


_KEY_NAMES = key_names(SCHEMA) | {f.name for f in dataclasses.fields(ExploreTask)}


# --------------------------------------------------------------------------- typed settings
def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _number(value: Any, name: str, unit: str = "", zero_ok: bool = False) -> float:
    """``value`` as a float: a finite number, positive (or >= 0 with ``zero_ok``)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        kind = "non-negative" if zero_ok else "positive"
        raise ValueError(
            f"{name} must be a finite {kind} number{f' ({unit})' if unit else ''}, got {value!r}"
        )
    return float(value)


def _names(value: Any, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{name} must be a non-empty list of structure names or null")
    return tuple(str(v) for v in value)


@dataclass(frozen=True)
class InitConfig:
    """Initial data: perturbed copies of the structures (seeded), labelled.

    Attributes
    ----------
    structures
        Names of the structures perturbed (``None``: all).
    n_perturb
        Copies of each structure.
    cell_strain
        Largest random cell strain component (fraction).
    displacement_A
        Standard deviation of the atomic displacements (Å).
    """

    structures: tuple[str, ...] | None
    n_perturb: int
    cell_strain: float
    displacement_A: float

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "structures", _names(self.structures, "structures"))
        _count(self.n_perturb, "n_perturb")
        set_(self, "cell_strain", _number(self.cell_strain, "cell_strain", "fraction", True))
        set_(self, "displacement_A", _number(self.displacement_A, "displacement_A", "Å", True))


@dataclass(frozen=True)
class StageConfig:
    """One fine-tune stage: where the MD explores, and how frames are chosen.

    Attributes
    ----------
    name
        Stage name (folder ``finetune/<name>``, step names ``ft.<name>.NNN.*``).
    structures
        Names of the starting structures (``None``: all).
    explore
        The MD settings and the frame filter (``explore.frame_filter``); ``explore.seed``
        is the seed of the first iteration (iteration ``i`` uses ``seed + i``).
    max_iterations
        Iterations at most.
    n_select
        Frames selected by entropy per iteration.
    chunk_size
        Frames added per round of the entropy selection.
    dh_watch
        The MD's extrapolation watch, ``{"max_dH": nats, "action": "mark" | "stop",
        "every": steps | None}`` (the fields of :class:`~pfd_ase.explore.DHWatch` but its
        bank, which is the dataset's), or ``None`` (no watch). With a watch only the frames
        beyond ``max_dH`` are candidates, and an iteration with none ends the stage.
    """

    name: str
    structures: tuple[str, ...] | None
    explore: ExploreTask
    max_iterations: int
    n_select: int
    chunk_size: int
    dh_watch: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", self.name):
            raise ValueError(f"name must be letters, digits, '_' or '-', got {self.name!r}")
        object.__setattr__(self, "structures", _names(self.structures, "structures"))
        if not isinstance(self.explore, ExploreTask):
            raise ValueError(f"explore must be an ExploreTask, not {type(self.explore).__name__}")
        for key in ("max_iterations", "n_select", "chunk_size"):
            _count(getattr(self, key), key)
        object.__setattr__(self, "dh_watch", _dh_watch(self.dh_watch))


def _dh_watch(block: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stage's ``dh_watch`` block, checked; ``None`` when ``max_dH`` is null (no watch)."""
    if block is None:
        return None
    block = {"max_dH": None, "action": "mark", "every": None, **block}
    unknown = set(block) - {"max_dH", "action", "every"}
    if unknown:
        raise ValueError(f"dh_watch: unknown keys {sorted(unknown)}")
    if block["max_dH"] is None:
        if block["action"] != "mark" or block["every"] is not None:
            raise ValueError("dh_watch.action and dh_watch.every need dh_watch.max_dH (nats)")
        return None
    max_dH = _number(block["max_dH"], "dh_watch.max_dH", "nats")
    if block["action"] not in DH_ACTIONS:
        raise ValueError(
            f"dh_watch.action must be one of {', '.join(DH_ACTIONS)}, got {block['action']!r}"
        )
    every = block["every"]
    if every is not None:
        every = _count(every, "dh_watch.every")
    return {"max_dH": max_dH, "action": block["action"], "every": every}


@dataclass(frozen=True)
class DistillConfig:
    """The distillation loop: teacher MD, student-teacher comparison, student training.

    Attributes
    ----------
    enabled
        Run it at all.
    max_iterations
        Iterations at most.
    n_frames
        Teacher-labelled frames added per iteration (the first: evenly spaced frames).
    force_devi_threshold_eV_A
        Frames whose largest atomic student-teacher force deviation exceeds this join the
        training set (eV/Å).
    target_force_rmse_eV_A
        Stop when the student-teacher force RMSE on new frames is below this (eV/Å).
    min_improvement
        Stop when that RMSE improves by less than this fraction.
    structures
        Names of the starting structures (``None``: all).
    explore
        The teacher MD settings and the frame filter; ``explore.seed`` is the seed of the
        first iteration.
    min_atoms
        Each starting structure is repeated until it holds at least this many atoms
        (:func:`pfd_ase.structures.repeated_to`; 1: as given). The teacher is cheap: larger
        cells give the student more, less correlated environments per frame (the issue's
        32-64 atoms against the 8-16 of the DFT stages).
    student_explore
        ``None``: the teacher drives the MD of every iteration (the spec's loop). Otherwise
        (``distill.explore.driver: student``) the current student runs the MD of the
        iterations after the first with these settings (``explore`` with the
        ``distill.explore.student_md`` overrides; the student is ~20x faster than the
        teacher, so its walkers can run longer), and the teacher labels the frames where
        the two disagree most: the student's own failures, e.g. atoms it lets collide,
        become its training data, as in DP-GEN's concurrent learning. The first
        iteration, with no student yet, is the teacher's.
    perturb
        ``None``, or perturbed copies of the starting structures (as repeated to
        ``min_atoms``; ``structures`` unused) that the teacher labels before the first
        training, beside its MD frames: strained cells and displaced atoms the short MD
        from perfect crystals does not reach.
    perturb_seed
        Seed of the perturbations (one ``np.random.default_rng`` stream).
    """

    enabled: bool
    max_iterations: int
    n_frames: int
    force_devi_threshold_eV_A: float
    target_force_rmse_eV_A: float
    min_improvement: float
    structures: tuple[str, ...] | None
    explore: ExploreTask
    min_atoms: int = 1
    student_explore: ExploreTask | None = None
    perturb: InitConfig | None = None
    perturb_seed: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "enabled", bool(self.enabled))
        set_(self, "structures", _names(self.structures, "structures"))
        for key in ("max_iterations", "n_frames", "min_atoms"):
            _count(getattr(self, key), key)
        for key, zero_ok in (
            ("force_devi_threshold_eV_A", True),
            ("target_force_rmse_eV_A", False),
            ("min_improvement", True),
        ):
            unit = "fraction" if key == "min_improvement" else "eV/Å"
            set_(self, key, _number(getattr(self, key), key, unit, zero_ok))


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained: the teacher (the base model fine-tuned) or the student.

    Attributes
    ----------
    role
        ``"teacher"`` or ``"student"``.
    steps
        deepmd-kit training steps.
    learning_rate
        deepmd-kit ``learning_rate`` section (``None``: the role's default schedule).
    seed
        Seed of the training.
    type_map
        Elements of the model (``None``: those of the frames).
    base_model
        Teacher: the pre-trained model (path or name); ``None`` for the student.
    head
        Teacher: the branch of a multi-task base model.
    chgnet_epochs
        Teacher on a CHGNet or SevenNet base model: epochs.
    compress
        Student: compress it (``dp compress``) where possible.
    virial
        deepmd-kit training also fits the stress labels (the virial loss).
    stress_weight
        Teacher on a CHGNet or SevenNet base model: the weight of its stress loss
        (``None``: the trainer's default; ``0``: stresses not fitted).
    sel
        Student: neighbours kept within the cut-off (``None``: the template's,
        :data:`pfd_ase.training.deepmd.STUDENT_DESCRIPTOR`).
    init_from_previous
        Student: each distillation iteration after the first starts from the previous
        student (deepmd-kit ``--init-model``) instead of from scratch.
    init_model
        Student: the checkpoint this training starts from (set per iteration by the
        distillation loop; ``None``: from scratch).
    loss
        Student: deepmd-kit loss prefactors (:data:`LOSS_PREFACTORS`) that replace the
        defaults of :func:`pfd_ase.training.deepmd.default_loss` (``None``: the defaults).
    structure_weights
        How many times each labelled frame of a structure (by name) enters the training
        data (integers >= 1; ``None``: every frame once).
    """

    role: str
    steps: int
    learning_rate: Any
    seed: int
    type_map: tuple[str, ...] | None
    base_model: str | None
    head: str | None
    chgnet_epochs: int
    compress: bool
    virial: bool = False
    stress_weight: float | None = None
    sel: int | None = None
    init_from_previous: bool = False
    init_model: str | None = None
    loss: Mapping[str, float] | None = None
    structure_weights: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        if self.role not in ("teacher", "student"):
            raise ValueError(f"role must be 'teacher' or 'student', got {self.role!r}")
        if self.structure_weights is not None:
            weights = self.structure_weights
            if not isinstance(weights, Mapping):
                raise ValueError(f"structure_weights must be a mapping, got {weights!r}")
            weights = {str(k): _count(v, f"structure_weights: {k}") for k, v in weights.items()}
            object.__setattr__(self, "structure_weights", weights or None)
        if self.loss is not None:
            object.__setattr__(self, "loss", _loss_prefactors(self.loss))
        _count(self.steps, "steps")
        if self.sel is not None:
            object.__setattr__(self, "sel", _count(self.sel, "sel"))
        _count(self.chgnet_epochs, "chgnet_epochs")
        if self.stress_weight is not None:
            weight = _number(self.stress_weight, "stress_weight", zero_ok=True)
            object.__setattr__(self, "stress_weight", weight)
        if self.type_map is not None:
            object.__setattr__(self, "type_map", tuple(str(s) for s in self.type_map))
        if self.role == "teacher" and not self.base_model:
            raise ValueError("a teacher needs a base model")


#: The deepmd-kit ``ener`` loss prefactors a student's ``loss`` setting may change.
LOSS_PREFACTORS = tuple(f"{k}_pref_{q}" for q in "efv" for k in ("start", "limit"))


def _loss_prefactors(loss: Any) -> dict[str, float]:
    """``loss`` checked: a mapping of :data:`LOSS_PREFACTORS` to finite numbers >= 0."""
    if not isinstance(loss, Mapping):
        raise ValueError(f"loss must be a mapping of loss prefactors, got {loss!r}")
    unknown = sorted(set(loss) - set(LOSS_PREFACTORS))
    if unknown:
        raise ValueError(f"loss: unknown prefactors {unknown}; known: {list(LOSS_PREFACTORS)}")
    return {name: _number(value, f"loss: {name}", zero_ok=True) for name, value in loss.items()}


def _explore_task(block: Mapping[str, Any], seed: int) -> ExploreTask:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(ExploreTask):
        value = block[EXPLORE_KEYS.get(f.name, f.name)]
        if f.name == "seed":
            value = seed if value is None else value
        elif f.name == "frame_filter":
            value = _typed("frame_filter", lambda value=value: FrameFilter(**value))
        kwargs[f.name] = value
    try:
        return ExploreTask(**kwargs)
    except (TypeError, ValueError) as exc:  # ExploreTask's messages, in the YAML names
        text = str(exc)
        for field_name, key in EXPLORE_KEYS.items():
            text = re.sub(rf"(?<![\w.]){field_name}\b", key, text)
        raise ValueError(text) from exc


def _typed(where: str, build: Any) -> Any:
    """``build()``; its ``ValueError`` or ``TypeError`` as a :class:`ConfigError` at ``where``."""
    try:
        return build()
    except ConfigError as exc:
        raise ConfigError(_located(where, str(exc))) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(_located(where, str(exc))) from exc


def _located(where: str, text: str) -> str:
    first = re.match(r"[A-Za-z_][\w\[\].]*", text)
    if first and first.group(0).split(".")[0].split("[")[0] in _KEY_NAMES:
        return f"{where}.{text}"  # "temperatures_K must ..." -> "finetune.stages[0].temp..."
    return f"{where}: {text}"


def init_config(config: Mapping[str, Any]) -> InitConfig:
    """The typed ``init`` section."""
    init = config["init"]
    return _typed("init", lambda: InitConfig(**init))


def finetune_stages(config: Mapping[str, Any]) -> list[StageConfig]:
    """The typed fine-tune stages; stage ``s`` explores with seed ``seed + 1000 (s + 1)``."""
    out = []
    for s, stage in enumerate(config["finetune"]["stages"]):
        seed = config["seed"] + 1000 * (s + 1)
        out.append(
            _typed(
                f"finetune.stages[{s}]",
                lambda stage=stage, s=s, seed=seed: StageConfig(
                    name=stage["name"] if stage["name"] is not None else f"stage{s + 1}",
                    structures=stage["structures"],
                    explore=_explore_task(stage, seed),
                    max_iterations=stage["max_iterations"],
                    n_select=stage["n_select"],
                    chunk_size=stage["chunk_size"],
                    dh_watch=stage["dh_watch"],
                ),
            )
        )
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"finetune.stages: stage names must differ, got {names}")
    return out


def _student_explore(block: Mapping[str, Any], seed: int) -> ExploreTask | None:
    """The student's MD settings (``block`` with its ``student_md`` overrides) when
    ``block["driver"]`` is ``"student"``; ``None`` when it is ``"teacher"``."""
    driver = block["driver"]
    if driver not in DISTILL_DRIVERS:
        raise ValueError(f"driver must be one of {', '.join(DISTILL_DRIVERS)}, got {driver!r}")
    overrides = block.get("student_md") or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"student_md must be a mapping of MD settings, got {overrides!r}")
    known = {EXPLORE_KEYS.get(f.name, f.name) for f in dataclasses.fields(ExploreTask)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"student_md: unknown MD settings {unknown}; known: {sorted(known)}")
    if driver != "student":
        if overrides:
            raise ValueError("student_md is set but driver is teacher: the student never explores")
        return None
    return _explore_task({**block, **overrides}, seed)


def distill_config(config: Mapping[str, Any]) -> DistillConfig:
    """The typed ``distill`` section; its MD explores with seed ``seed + 100000``, its
    perturbed copies are drawn with seed ``seed + 200000``."""
    ds = config["distill"]
    seed = config["seed"] + 100000
    return _typed(
        "distill",
        lambda: DistillConfig(
            enabled=ds["enabled"],
            max_iterations=ds["max_iterations"],
            n_frames=ds["n_frames"],
            force_devi_threshold_eV_A=ds["force_devi_threshold_eV_A"],
            target_force_rmse_eV_A=ds["target_force_rmse_eV_A"],
            min_improvement=ds["min_improvement"],
            structures=ds["explore"]["structures"],
            min_atoms=_typed("explore", lambda: _count(ds["explore"]["min_atoms"], "min_atoms")),
            explore=_typed("explore", lambda: _explore_task(ds["explore"], seed)),
            student_explore=_typed("explore", lambda: _student_explore(ds["explore"], seed)),
            perturb=_typed("perturb", lambda: _distill_perturb(ds["perturb"])),
            perturb_seed=config["seed"] + 200000,
        ),
    )


def _distill_perturb(block: Mapping[str, Any]) -> InitConfig | None:
    """``distill.perturb`` typed: ``None`` when ``n_perturb`` is 0 (no perturbed copies)."""
    n = block["n_perturb"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n_perturb must be an integer >= 0 (0: none), got {n!r}")
    if n == 0:
        return None
    return InitConfig(structures=None, **block)


def teacher_training(config: Mapping[str, Any]) -> TrainConfig:
    """The typed training settings of the teacher (``base_model`` and ``finetune``)."""
    ft, base = config["finetune"], config["base_model"]
    return _typed(
        "finetune",
        lambda: TrainConfig(
            role="teacher",
            steps=ft["steps"],
            learning_rate=ft["learning_rate"],
            seed=config["seed"],
            type_map=config["type_map"],
            base_model=str(base["path"]) if base["path"] else None,
            head=base["head"],
            chgnet_epochs=ft["chgnet_epochs"],
            compress=False,
            virial=bool(ft["virial"]),
            stress_weight=ft["stress_weight"],
            structure_weights=ft["structure_weights"],
        ),
    )


def student_training(config: Mapping[str, Any]) -> TrainConfig:
    """The typed training settings of the student (``distill``)."""
    ds = config["distill"]
    return _typed(
        "distill",
        lambda: TrainConfig(
            role="student",
            steps=ds["steps"],
            learning_rate=ds["learning_rate"],
            seed=config["seed"],
            type_map=config["type_map"],
            base_model=None,
            head=None,
            chgnet_epochs=config["finetune"]["chgnet_epochs"],
            compress=ds["compress"],
            virial=bool(ds["virial"]),
            sel=ds.get("sel"),
            init_from_previous=bool(ds["init_from_previous"]),
            loss=ds.get("loss"),
            structure_weights=ds["structure_weights"],
        ),
    )


def structure_atoms(spec: Any) -> Atoms:
    """The structure of a ``config["structures"]`` entry: an ``Atoms`` (copied) or a spec."""
    if isinstance(spec, Atoms):
        atoms = spec.copy()
        atoms.calc = None
        return atoms
    from pfd_ase.structures import build_structure

    return build_structure(spec)


# --------------------------------------------------------------------------- loading
def load_config(
    source: str | os.PathLike | Mapping[str, Any], check_setup: bool = True
) -> dict[str, Any]:
    """Read (YAML or JSON file, or a dict), merge onto the defaults, validate; return it.

    Relative structure files are resolved against the config file's folder (the working
    directory for a dict). ``check_setup=False`` skips the checks of the base model and
    the labeler set-up (see :func:`validate`).
    """
    if isinstance(source, Mapping):
        raw = dict(source)
        base = Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        text = path.read_text()
        try:
            if path.suffix == ".json":
                raw = json.loads(text)
            else:
                import yaml

                raw = yaml.safe_load(text)
        except Exception as exc:
            raise ConfigError(f"{path}: cannot parse: {exc}") from exc
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        base = path.parent
    labeler_obj = raw.pop("labeler", None) if _is_calculator(raw.get("labeler")) else None
    for section, key in _SHORTHANDS.items():  # labeler: gpaw -> labeler: {name: gpaw}
        if isinstance(raw.get(section), str | os.PathLike):
            raw[section] = {key: os.fspath(raw[section])}
    config = _merge(SCHEMA, raw, ())
    if labeler_obj is not None:  # Python API: any ASE calculator object labels
        config["labeler"] = labeler_obj
    structures = config["structures"]
    if not isinstance(structures, Mapping):
        raise ConfigError(
            "structures must be a mapping of names to structures, e.g. "
            "{diamond: diamond.cif, fcc: {bulk: {name: Si, crystalstructure: fcc, a: 3.87}}}"
        )
    for name, spec in structures.items():
        if isinstance(spec, str | os.PathLike):  # a plain path: a file
            spec = structures[name] = {"file": os.fspath(spec)}
        if isinstance(spec, dict) and "file" in spec:
            if isinstance(spec["file"], str | os.PathLike):
                spec["file"] = str(base / Path(spec["file"]).expanduser())
    validate(config, check_setup=check_setup)
    return config


def _merge(schema: Mapping[str, Any], given: Any, where: tuple[str, ...]) -> dict[str, Any]:
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ConfigError(
            f"{_name(where)} must be a mapping of the keys {', '.join(schema)}; got "
            f"{type(given).__name__} {given!r}"
        )
    out = schema_defaults(schema)
    for key, value in given.items():
        if key not in schema:
            hint = difflib.get_close_matches(str(key), list(schema), n=1, cutoff=0.4)
            raise ConfigError(
                f"unknown key {_name((*where, str(key)))!r}"
                + (f"; did you mean {_name((*where, hint[0]))!r}?" if hint else "")
                + f" (known: {', '.join(schema)})"
            )
        node = schema[key]
        if isinstance(node, Mapping):
            out[key] = _merge(node, value, (*where, key))
        elif node.item is not None:
            if not isinstance(value, list):
                raise ConfigError(f"{_name((*where, key))} must be a list")
            out[key] = [
                _merge(node.item, entry, (*where, key, str(i))) for i, entry in enumerate(value)
            ]
        elif where == () and key == "structures":
            out[key] = _copy_structures(value)  # Atoms copied without their calculators
        else:
            out[key] = copy.deepcopy(value)
    return out


def _copy_structures(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return value
    return {
        name: spec.copy() if isinstance(spec, Atoms) else copy.deepcopy(spec)
        for name, spec in value.items()
    }


def _name(where: tuple[str, ...]) -> str:
    return ".".join(where) or "<top>"


def validate(config: Mapping[str, Any], check_setup: bool = True) -> None:
    """Raise :class:`ConfigError` for the first problem found.

    Builds the typed settings (each validates itself), checks the structure names and the
    type map, the plausible ranges of the MD settings, that no start structure has
    overlapping atoms, that the student's ``sel`` covers the neighbours of its structures
    and that the run directory was not labelled with another labeler. With ``check_setup``
    also checks that the base model exists (and reads), knows every element, and that the
    labeler is usable (override keys, e.g. VASP command and POTCARs): cheap checks, nothing
    is computed.
    """
    structures = config["structures"]
    if not isinstance(structures, Mapping) or not structures:
        raise ConfigError("structures: at least one named structure is needed")
    built = {}
    for name, spec in structures.items():
        try:
            built[name] = structure_atoms(spec)
        except Exception as exc:
            raise ConfigError(f"structures.{name}: {exc}") from exc
    for name, atoms in built.items():
        _check_overlaps(name, atoms)

    def check_names(names: Any, where: str) -> None:
        missing = [n for n in names or () if n not in structures]
        if missing:
            raise ConfigError(f"{where}: unknown structures {missing}; known: {list(structures)}")

    seed = config["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    check_names(init_config(config).structures, "init.structures")
    check_names(teacher_training(config).structure_weights, "finetune.structure_weights")
    check_names(student_training(config).structure_weights, "distill.structure_weights")
    _typed(
        "finetune",
        lambda: _number(
            config["finetune"]["force_rmse_threshold_eV_A"], "force_rmse_threshold_eV_A", "eV/Å"
        ),
    )
    for i, stage in enumerate(finetune_stages(config)):
        check_names(stage.structures, f"finetune.stages[{i}].structures")
        _check_plausible(stage.explore, f"finetune.stages[{i}]")
    if config["distill"]["enabled"]:
        distill = distill_config(config)
        check_names(distill.structures, "distill.explore.structures")
        _check_plausible(distill.explore, "distill.explore")
        if distill.student_explore is not None:
            _check_plausible(distill.student_explore, "distill.explore.student_md")
        names = distill.structures or list(built)
        sel = student_training(config).sel
        _check_student_neighbours({name: built[name] for name in names}, sel)

    labeler = config["labeler"]
    if isinstance(labeler, Mapping) and labeler.get("timeout_s") is not None:
        _typed("labeler", lambda: _number(labeler["timeout_s"], "timeout_s", "s"))

    executor = config["executor"]
    if executor["kind"] not in KINDS:
        raise ConfigError(f"executor.kind must be one of {KINDS}, got {executor['kind']!r}")
    _typed("executor", lambda: _count(executor["max_workers"], "max_workers"))

    symbols = sorted({s for a in built.values() for s in a.get_chemical_symbols()})
    type_map = config["type_map"]
    if type_map is not None:
        missing = sorted(set(symbols) - set(type_map))
        if missing:
            raise ConfigError(f"type_map {type_map} lacks elements {missing} of the structures")
    _check_workdir(config)
    if check_setup:
        _check_base_model(config["base_model"], symbols)
        _check_labeler(config["labeler"], symbols)


# --------------------------------------------------------------------------- physics checks
def _check_plausible(explore: ExploreTask, where: str) -> None:
    """MD settings inside :data:`~pfd_ase.workflow.schema.PLAUSIBLE_RANGES` (units mixed up)."""
    values = {
        "timestep_fs": [explore.timestep_fs],
        "temperatures_K": list(explore.temperatures_K),
        "pressures_GPa": [p for p in explore.pressures_GPa if p is not None],
    }
    for key, found in values.items():
        low, high, unit = PLAUSIBLE_RANGES[key]
        for value in found:
            if not low <= value <= high:
                raise ConfigError(
                    f"{where}.{key} {value:g} is outside the plausible range {low:g} to "
                    f"{high:g} {unit}{_unit_hint(key, value)}"
                )


def _unit_hint(key: str, value: float) -> str:
    """A guess at the unit a value outside its plausible range was given in."""
    low, high, _ = PLAUSIBLE_RANGES[key]
    guesses = {
        "timestep_fs": [("ps", 1000.0, "fs")],
        "pressures_GPa": [("bar", 1e-4, "GPa"), ("kbar", 0.1, "GPa"), ("Pa", 1e-9, "GPa")],
    }.get(key, [])
    for unit, factor, ours in guesses:
        if low <= value * factor <= high:
            return f" (given in {unit}? {value:g} {unit} = {value * factor:g} {ours})"
    return ""


def _check_overlaps(name: str, atoms: Atoms) -> None:
    """No two atoms of a start structure (or an atom and its periodic image) overlap."""
    from pfd_ase.structures import closest_pair

    pair = closest_pair(atoms, _OVERLAP_FACTOR)
    if pair is None:
        return
    i, j, distance, limit = pair
    what = f"atom {i} and its periodic image" if i == j else f"atoms {i} and {j}"
    symbols = atoms.get_chemical_symbols()
    raise ConfigError(
        f"structures.{name}: {what} ({symbols[i]}, {symbols[j]}) are {distance:.3f} Å apart, "
        f"less than {_OVERLAP_FACTOR:g} x the sum of their covalent radii ({limit:.2f} Å): "
        "overlapping atoms (a duplicated atom, a wrong cell or lattice constant?)"
    )


def _check_student_neighbours(structures: Mapping[str, Atoms], sel: int | None = None) -> None:
    """The student's ``sel`` covers the neighbours within its ``rcut`` in its structures.

    deepmd-kit keeps at most ``sel`` neighbours per atom and drops the farthest beyond them:
    a student trained on denser structures would have a truncated, discontinuous energy. The
    count is measured (ASE's neighbour list) on the distillation's start structures; MD at
    pressure or temperature only adds to it, so less than 10 % headroom is a warning.
    """
    import numpy as np
    from ase.neighborlist import neighbor_list

    from pfd_ase.training.deepmd import STUDENT_DESCRIPTOR

    configured = sel is not None
    sel = sel if configured else STUDENT_DESCRIPTOR.get("sel")
    rcut = float(STUDENT_DESCRIPTOR["rcut"])
    if isinstance(sel, list | tuple):
        sel = sum(int(n) for n in sel)
    if isinstance(sel, bool) or not isinstance(sel, int):
        return  # "auto": deepmd-kit measures it itself
    counts = {}
    for name, atoms in structures.items():
        if len(atoms):
            counts[name] = int(np.bincount(neighbor_list("i", atoms, rcut), minlength=1).max())
    if not counts:
        return
    densest = max(counts, key=lambda name: counts[name])
    most = counts[densest]
    what = (
        f"the student (se_atten_v2, rcut {rcut:g} Å) keeps at most sel = {sel} neighbours per "
        f"atom; structures.{densest} has {most} atoms within {rcut:g} Å of one atom"
    )
    if most > sel:
        enough = int(most * _SEL_HEADROOM) + 1
        raise ConfigError(
            f"distill.explore.structures: {what}, so deepmd-kit would drop neighbours and the "
            "student's energy would be truncated. Leave that structure out of "
            f"distill.explore.structures, raise distill.sel ({enough} leaves 10 % headroom), "
            "or set distill.enabled: false"
            + ("" if configured else " (the template's sel is STUDENT_DESCRIPTOR['sel'])")
        )
    if most * _SEL_HEADROOM > sel:
        warnings.warn(
            f"{what}: less than {_SEL_HEADROOM - 1:.0%} headroom, and MD at pressure or "
            "temperature packs more atoms within the cut-off (deepmd-kit then drops the "
            "farthest)",
            ConfigWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------- run directory
def _recorded_config(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The configuration recorded in the run directory's ``summary.json`` (``None``: none)."""
    path = Path(os.fspath(config["workdir"])) / "summary.json"
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return None  # not ours to judge here: the run itself reports a damaged summary
    return recorded if isinstance(recorded, dict) else None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _check_workdir(config: Mapping[str, Any]) -> None:
    """Refuse a run directory whose labels came from another labeler or other structures.

    A rerun redoes the steps whose settings changed; with another labeler (name or
    overrides) that is every labelled frame, and a run directory holding none of this
    configuration's structures is another run (two configurations sharing the default
    ``runs/pfd``). Other changes are allowed (see :func:`workdir_changes`).
    """
    recorded = _recorded_config(config)
    if recorded is None:
        return
    workdir = config["workdir"]
    fix = f"use another workdir, or remove {workdir} to start over"
    old, new = recorded.get("labeler"), config["labeler"]
    if isinstance(old, Mapping) and "overrides" in old and isinstance(new, Mapping):
        old_id = (str(old.get("name", "")).strip().lower(), _jsonable(old.get("overrides") or {}))
        new_id = (str(new["name"]).strip().lower(), _jsonable(dict(new.get("overrides") or {})))
        if old_id != new_id:
            raise ConfigError(
                f"workdir {workdir} was labelled by another labeler ({old_id[0]} with "
                f"overrides {old_id[1]} there, {new_id[0]} with {new_id[1]} here): a rerun "
                f"would discard and redo every labelled frame; {fix}"
            )
    old_names = set(recorded.get("structures") or {})
    if old_names and not old_names & set(config["structures"]):
        raise ConfigError(
            f"workdir {workdir} holds a run of other structures ({sorted(old_names)}; here: "
            f"{sorted(config['structures'])}); {fix}"
        )


def workdir_changes(config: Mapping[str, Any]) -> list[str]:
    """Settings that differ from those recorded in the run directory (dotted names).

    Empty for a new run directory. A rerun redoes the steps that depend on these settings
    (:class:`~pfd_ase.workflow.state.RunState`); ``pfd-ase validate`` lists them.
    """
    recorded = _recorded_config(config)
    if recorded is None:
        return []
    from pfd_ase.workflow.state import changed_inputs

    current = {k: v for k, v in config.items() if k not in ("progress", "workdir")}
    if not isinstance(current.get("labeler"), Mapping):
        current.pop("labeler", None)
    current["structures"] = {
        name: {"atoms": spec.get_chemical_formula()} if isinstance(spec, Atoms) else spec
        for name, spec in current["structures"].items()
    }
    old = {k: recorded[k] for k in current if k in recorded}
    return changed_inputs(old, _jsonable(current))


# --------------------------------------------------------------------------- set-up checks
def _check_base_model(base: Mapping[str, Any], symbols: list[str]) -> None:
    """The base model resolves (:func:`pfd_ase.models.resolve_model`: file or name, head)
    and its type map holds every element."""
    from pfd_ase.models import resolve_model

    path = base.get("path")
    if not path:
        raise ConfigError(
            "base_model.path is required (a checkpoint, a registry name, or 'chgnet')"
        )
    try:
        spec = resolve_model(path, head=base.get("head"))
    except Exception as exc:
        raise ConfigError(f"base_model: {exc}") from exc
    if spec.kind == "chgnet":
        try:
            import chgnet  # noqa: F401
        except ImportError as exc:
            raise ConfigError("base model CHGNet needs: pip install 'pfd_ase[chgnet]'") from exc
        if spec.path is not None:  # a fine-tuned checkpoint: it must read (weights only)
            from pfd_ase.calculators.chgnet import read_chgnet_checkpoint

            try:
                read_chgnet_checkpoint(spec.path)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"base_model.path: {exc}") from exc
        return
    if spec.kind == "sevennet":
        try:
            import sevenn  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "base model SevenNet needs: pip install 'pfd_ase[sevennet]' (sevenn)"
            ) from exc
    try:
        type_map = spec.type_map  # reads the checkpoint: a damaged file fails here
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"base_model.path: {exc}") from exc
    if type_map is not None:
        missing = sorted(set(symbols) - set(type_map))
        if missing:
            raise ConfigError(
                f"elements {missing} are not in the base model's type map {list(type_map)} ({path})"
            )


def _is_calculator(obj: Any) -> bool:
    from pfd_ase.calculators.labelers import is_calculator

    return obj is not None and not isinstance(obj, Mapping) and is_calculator(obj)


def _check_labeler(labeler: Any, symbols: list[str]) -> None:
    from pfd_ase.calculators.labelers import check_labeler

    try:
        if _is_calculator(labeler):
            check_labeler(labeler, symbols)
        else:
            check_labeler(labeler["name"], symbols, dict(labeler.get("overrides") or {}))
    except Exception as exc:
        raise ConfigError(f"labeler: {exc}") from exc
