"""Run configuration: one schema, its defaults, loading (YAML/JSON/dict) and validation.

A configuration is a nested dict described by :data:`SCHEMA`: every key has one default and
a one-line description (units, allowed values); :func:`default_config_text` renders them as
commented YAML. Every key must be known (a misspelt or unit-less key such as ``temperature``
instead of ``temperatures_K`` is an error naming the close match).

The settings the steps consume are typed (:class:`StageConfig`, :class:`DistillConfig`,
:class:`InitConfig`, :class:`TrainConfig`) and validate themselves on construction, once:
the MD settings of a stage are an :class:`~pfd_ase.explore.ExploreTask` (its fields, their
defaults and its validation; the YAML name of ``steps`` is ``md_steps``), the frame filter
its :class:`~pfd_ase.selectors.filters.FrameFilter` (``frame_filter:`` in YAML).
:func:`load_config` merges the defaults, builds the typed settings (any problem is a
:class:`ConfigError` naming the key), checks that the structures referenced exist, that
the elements are in the base model's type map and that the labeler is set up.

``config["structures"][name]`` is a structure spec (``bulk``/``file`` ...; see
:func:`pfd_ase.structures.build_structure`) or, from Python, an :class:`ase.Atoms`
(the workflow writes it to ``workdir/structures/<name>.extxyz``).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase import Atoms

from pfd_ase.calculators.labelers import KNOWN_LABELERS
from pfd_ase.explore import BAROSTATS, THERMOSTATS, ExploreTask
from pfd_ase.parallel import KINDS
from pfd_ase.selectors.filters import FrameFilter

__all__ = [
    "DEFAULTS",
    "EXPLORE_KEYS",
    "SCHEMA",
    "STAGE_DEFAULTS",
    "ConfigError",
    "DistillConfig",
    "InitConfig",
    "Setting",
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
]


class ConfigError(ValueError):
    """A configuration problem, found before any expensive work starts."""


# --------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class Setting:
    """One configuration key: its default and a one-line description.

    Attributes
    ----------
    default
        The default value (YAML data).
    doc
        One line: meaning, units, allowed values.
    free
        The value is free-form (a mapping whose keys are not checked).
    item
        For a list of sections (``finetune.stages``): the schema of one entry.
    """

    default: Any
    doc: str
    free: bool = False
    item: Mapping[str, Any] | None = None


#: YAML names of the :class:`ExploreTask` fields that are named differently in a run
#: configuration (``steps`` would read as training steps there).
EXPLORE_KEYS: dict[str, str] = {"steps": "md_steps"}

#: Defaults that :class:`ExploreTask` leaves to its caller.
_EXPLORE_CONFIG_DEFAULTS: dict[str, Any] = {"temperatures_K": [500.0], "seed": None}

_EXPLORE_DOCS: dict[str, str] = {
    "temperatures_K": "MD temperatures (K, > 0): one walker per structure, temperature, pressure",
    "pressures_GPa": "MD pressures (GPa); null in the list = an NVT walker",
    "steps": "MD steps per walker (integer > 0)",
    "timestep_fs": "MD time step (fs, > 0)",
    "sample_every": "keep a frame every this many MD steps (integer, <= md_steps)",
    "thermostat": f"NVT thermostat: {', '.join(THERMOSTATS)}",
    "barostat": f"NPT barostat: {', '.join(BAROSTATS)} (isotropic)",
    "seed": "base seed of the MD walkers (iteration i adds i); null = from the top-level seed",
    "tdamp_fs": "thermostat time constant (fs, > 0); null = 100 time steps",
    "pdamp_fs": "barostat time constant (fs, > 0); null = 1000 time steps",
    "compressibility_per_GPa": "compressibility assumed by the Berendsen barostat (1/GPa, > 0)",
    "include_initial": "also sample the starting structure (step 0): true or false",
    "check_every": "look for too-close atoms every this many MD steps (integer > 0)",
    "frame_filter": "limits of the frame filter applied to explored frames",
}

_FILTER_DOCS: dict[str, str] = {
    "distance_factor": "safe distance = this x sum of covalent radii (> 0)",
    "safe_distances": "per element pair safe distances (Å), e.g. {Si-O: 1.2}",
    "max_length_ratio": "a cell length may change by at most this factor (>= 1; null = off)",
    "max_volume_ratio": "the cell volume may change by at most this factor (>= 1; null = off)",
    "angle_range_deg": "allowed range of cell angles [lo, hi] (degrees; null = off)",
    "max_angle_change_deg": "largest change of a cell angle (degrees, > 0; null = off)",
    "max_force_eV_A": "largest force on an atom (eV/Å, > 0; null = off)",
}


def _yaml_value(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_yaml_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _yaml_value(v) for k, v in value.items()}
    return value


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(f.name)


def _filter_schema() -> dict[str, Setting]:
    out = {}
    for f in dataclasses.fields(FrameFilter):
        out[f.name] = Setting(
            _yaml_value(_field_default(f)), _FILTER_DOCS[f.name], free=f.name == "safe_distances"
        )
    return out


def _explore_schema() -> dict[str, Any]:
    """The MD keys of a stage: the fields of :class:`ExploreTask` and their defaults."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(ExploreTask):
        name = EXPLORE_KEYS.get(f.name, f.name)
        if f.name == "frame_filter":
            out[name] = _filter_schema()
        elif f.name in _EXPLORE_CONFIG_DEFAULTS:
            out[name] = Setting(_EXPLORE_CONFIG_DEFAULTS[f.name], _EXPLORE_DOCS[f.name])
        else:
            out[name] = Setting(_yaml_value(_field_default(f)), _EXPLORE_DOCS[f.name])
    return out


_STRUCTURE_NAMES = "names from `structures`; null = all of them"

#: One line on each section (a key whose value is a mapping of known keys).
_SECTION_DOCS: dict[str, str] = {
    "labeler": "the DFT code that labels frames (or any ASE calculator object, from Python)",
    "base_model": "the pre-trained model fine-tuned into the teacher",
    "init": "initial data: perturbed copies of the structures, labelled",
    "finetune": "the fine-tune loop (teacher): explore, filter, select, label, evaluate, train",
    "distill": "the distillation loop (student): teacher MD, compare, teacher labels, train",
    "explore": "the teacher MD of the distillation",
    "executor": "where labelling and MD tasks run",
    "frame_filter": _EXPLORE_DOCS["frame_filter"],
}

#: Schema of one fine-tune stage (an entry of ``finetune.stages``).
STAGE_SCHEMA: dict[str, Any] = {
    "name": Setting(None, "stage name (run folder and step names); null = stage<N>"),
    "structures": Setting(None, f"starting structures of the MD: {_STRUCTURE_NAMES}"),
    **_explore_schema(),
    "max_iterations": Setting(3, "explore-select-label-train iterations at most (integer > 0)"),
    "n_select": Setting(10, "frames selected by entropy per iteration (integer > 0)"),
    "chunk_size": Setting(5, "frames added per round of the entropy selection (integer > 0)"),
}

#: The whole configuration: nested sections of :class:`Setting`.
SCHEMA: dict[str, Any] = {
    "workdir": Setting("runs/pfd", "run directory; a rerun resumes it"),
    "seed": Setting(0, "seed of every random choice: perturbations, MD, training (integer >= 0)"),
    "type_map": Setting(None, "elements of the trained models, e.g. [Si, O]; null = from data"),
    "structures": Setting(
        {},
        "named structures: {name: {bulk: {ase.build.bulk arguments}} or {file: path, index: n},"
        " optional repeat: [n1, n2, n3], vacancy: atom index}",
        free=True,
    ),
    "labeler": {
        "name": Setting("gpaw", f"DFT labeler: {', '.join(KNOWN_LABELERS)}"),
        "overrides": Setting({}, "labeler settings replacing its defaults (e.g. VASP INCAR)", True),
    },
    "base_model": {
        "path": Setting("chgnet", "pre-trained model: a .pt/.pth file, a registry name, chgnet"),
        "head": Setting(None, "branch of a multi-task model; RANDOM = a new fitting net"),
    },
    "init": {
        "structures": Setting(
            None, f"structures perturbed for the initial data: {_STRUCTURE_NAMES}"
        ),
        "n_perturb": Setting(4, "perturbed copies of each structure (integer > 0)"),
        "cell_strain": Setting(0.03, "largest random cell strain component (fraction, >= 0)"),
        "displacement_A": Setting(0.1, "standard deviation of the atomic displacements (Å, >= 0)"),
    },
    "finetune": {
        "steps": Setting(2000, "training steps of each deepmd-kit fine-tuning (integer > 0)"),
        "learning_rate": Setting(
            None, "deepmd-kit learning_rate section; null = 1e-3 -> 3.51e-8 every 200 steps", True
        ),
        "force_rmse_threshold_eV_A": Setting(
            0.06, "converged when the model's force RMSE on new frames is below this (eV/Å)"
        ),
        "chgnet_epochs": Setting(5, "epochs of each CHGNet fine-tuning (integer > 0)"),
        "stages": Setting(
            [], "exploration stages, in order; each entry has the keys below", item=STAGE_SCHEMA
        ),
    },
    "distill": {
        "enabled": Setting(True, "distil the teacher into a small student: true or false"),
        "steps": Setting(2000, "training steps of the student (integer > 0)"),
        "learning_rate": Setting(
            None, "deepmd-kit learning_rate section; null = 1e-2 -> 1e-8", True
        ),
        "max_iterations": Setting(3, "explore-compare-train iterations at most (integer > 0)"),
        "n_frames": Setting(20, "teacher-labelled frames added per iteration (integer > 0)"),
        "force_devi_threshold_eV_A": Setting(
            0.05, "add frames whose max student-teacher force deviation exceeds this (eV/Å)"
        ),
        "target_force_rmse_eV_A": Setting(
            0.05, "stop when the student-teacher force RMSE is below this (eV/Å, > 0)"
        ),
        "min_improvement": Setting(
            0.02, "stop when the RMSE improves by less than this fraction (>= 0)"
        ),
        "compress": Setting(True, "compress the student (dp compress) where possible"),
        "explore": {
            "structures": Setting(None, f"starting structures of the MD: {_STRUCTURE_NAMES}"),
            **_explore_schema(),
        },
    },
    "executor": {
        "kind": Setting("serial", f"where tasks run: {', '.join(KINDS)}"),
        "max_workers": Setting(2, "worker processes of process and local dask (integer > 0)"),
        "address": Setting(None, "dask scheduler address; null = a local cluster"),
        "folder": Setting("slurm_logs", "slurm: folder of submitit's logs"),
        "slurm": Setting({}, "slurm: submitit parameters (slurm_partition, timeout_min...)", True),
    },
    "progress": Setting(True, "show progress bars: true or false"),
}


def _defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: _defaults(node) if isinstance(node, Mapping) else copy.deepcopy(node.default)
        for key, node in schema.items()
    }


#: Default configuration (derived from :data:`SCHEMA`).
DEFAULTS: dict[str, Any] = _defaults(SCHEMA)
#: Default fine-tune stage (derived from :data:`SCHEMA`).
STAGE_DEFAULTS: dict[str, Any] = _defaults(STAGE_SCHEMA)


def _key_names(schema: Mapping[str, Any]) -> set[str]:
    out = set(schema)
    for node in schema.values():
        if isinstance(node, Mapping):
            out |= _key_names(node)
        elif node.item is not None:
            out |= _key_names(node.item)
    return out


_KEY_NAMES = _key_names(SCHEMA) | {f.name for f in dataclasses.fields(ExploreTask)}


# --------------------------------------------------------------------------- typed settings
def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _number(value: Any, name: str, unit: str, zero_ok: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(
            f"{name} must be a {'non-negative' if zero_ok else 'positive'} number ({unit}),"
            f" got {value!r}"
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
    """

    name: str
    structures: tuple[str, ...] | None
    explore: ExploreTask
    max_iterations: int
    n_select: int
    chunk_size: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", self.name):
            raise ValueError(f"name must be letters, digits, '_' or '-', got {self.name!r}")
        object.__setattr__(self, "structures", _names(self.structures, "structures"))
        if not isinstance(self.explore, ExploreTask):
            raise ValueError(f"explore must be an ExploreTask, not {type(self.explore).__name__}")
        for key in ("max_iterations", "n_select", "chunk_size"):
            _count(getattr(self, key), key)


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
    """

    enabled: bool
    max_iterations: int
    n_frames: int
    force_devi_threshold_eV_A: float
    target_force_rmse_eV_A: float
    min_improvement: float
    structures: tuple[str, ...] | None
    explore: ExploreTask

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "enabled", bool(self.enabled))
        set_(self, "structures", _names(self.structures, "structures"))
        for key in ("max_iterations", "n_frames"):
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
        Teacher on a CHGNet base model: epochs.
    compress
        Student: compress it (``dp compress``) where possible.
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

    def __post_init__(self) -> None:
        if self.role not in ("teacher", "student"):
            raise ValueError(f"role must be 'teacher' or 'student', got {self.role!r}")
        _count(self.steps, "steps")
        _count(self.chgnet_epochs, "chgnet_epochs")
        if self.type_map is not None:
            object.__setattr__(self, "type_map", tuple(str(s) for s in self.type_map))
        if self.role == "teacher" and not self.base_model:
            raise ValueError("a teacher needs a base model")


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
                ),
            )
        )
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"finetune.stages: stage names must differ, got {names}")
    return out


def distill_config(config: Mapping[str, Any]) -> DistillConfig:
    """The typed ``distill`` section; its MD explores with seed ``seed + 100000``."""
    ds = config["distill"]
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
            explore=_typed(
                "explore", lambda: _explore_task(ds["explore"], config["seed"] + 100000)
            ),
        ),
    )


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
    config = _merge(SCHEMA, raw, ())
    if labeler_obj is not None:  # Python API: any ASE calculator object labels
        config["labeler"] = labeler_obj
    structures = config["structures"]
    if not isinstance(structures, Mapping):
        raise ConfigError("structures must be a mapping of names to structures")
    for spec in structures.values():
        if isinstance(spec, dict) and "file" in spec and not Path(spec["file"]).is_absolute():
            spec["file"] = str(base / spec["file"])
    validate(config, check_setup=check_setup)
    return config


def _merge(schema: Mapping[str, Any], given: Any, where: tuple[str, ...]) -> dict[str, Any]:
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"{_name(where)} must be a mapping, got {type(given).__name__}")
    out = _defaults(schema)
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
    type map. With ``check_setup`` also checks that the base model exists and knows every
    element, and that the labeler is usable (e.g. VASP command and POTCARs): cheap checks.
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

    def check_names(names: Any, where: str) -> None:
        missing = [n for n in names or () if n not in structures]
        if missing:
            raise ConfigError(f"{where}: unknown structures {missing}; known: {list(structures)}")

    seed = config["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    check_names(init_config(config).structures, "init.structures")
    teacher_training(config)
    _typed(
        "finetune",
        lambda: _number(
            config["finetune"]["force_rmse_threshold_eV_A"], "force_rmse_threshold_eV_A", "eV/Å"
        ),
    )
    for i, stage in enumerate(finetune_stages(config)):
        check_names(stage.structures, f"finetune.stages[{i}].structures")
    if config["distill"]["enabled"]:
        distill = distill_config(config)
        student_training(config)
        check_names(distill.structures, "distill.explore.structures")

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
    if check_setup:
        _check_base_model(config["base_model"], symbols)
        _check_labeler(config["labeler"], symbols)


# --------------------------------------------------------------------------- rendering
def default_config_text() -> str:
    """The default configuration as commented YAML: every key, its default, one line on it.

    Rendered from :data:`SCHEMA`, so it cannot drift from what :func:`load_config` accepts;
    the keys of a fine-tune stage are shown as a commented example entry. Loading the text
    back gives the defaults (``structures`` must still be filled in to run).
    """
    lines = [
        "# pfd_ase run configuration: every key with its default.",
        "# Units are in the key names (_K, _GPa, _fs, _A = Å, _eV_A = eV/Å).",
    ]
    lines += _render(SCHEMA, 0, commented=False)
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    import yaml

    text = yaml.safe_dump(_yaml_value(value), default_flow_style=True, width=10_000)
    text = text.strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _render(schema: Mapping[str, Any], indent: int, commented: bool) -> list[str]:
    pad = " " * indent
    lead = "# " if commented else ""
    lines = []
    for key, node in schema.items():
        if isinstance(node, Mapping):
            lines.append(f"{lead}{pad}{key}:  # {_SECTION_DOCS[key]}")
            lines += _render(node, indent + 2, commented)
            continue
        lines.append(f"{lead}{pad}{key}: {_scalar(node.default)}  # {node.doc}")
        if node.item is not None:  # a list of sections: one commented example entry
            entry = _render(node.item, indent + 4, commented=True)
            entry[0] = f"# {pad}  - " + entry[0][len(f"# {pad}    ") :]
            lines += entry
    return lines


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
        return
    type_map = spec.type_map
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
