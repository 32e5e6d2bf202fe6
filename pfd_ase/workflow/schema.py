"""The schema of a run configuration: every key, its one default and a one-line description.

:data:`SCHEMA` is the single source: :func:`pfd_ase.workflow.config.load_config` merges and
checks a configuration against it, and :func:`default_config_text` renders it as commented
YAML (``pfd-ase config``). The MD keys of a stage are the fields of
:class:`~pfd_ase.explore.ExploreTask` with its defaults (``steps`` is named ``md_steps``,
see :data:`EXPLORE_KEYS`), and ``frame_filter`` the fields of
:class:`~pfd_ase.selectors.filters.FrameFilter` with its defaults.

:data:`PLAUSIBLE_RANGES` holds the physically plausible range of the MD settings that are
easy to give in the wrong unit (a time step in ps, a pressure in bar) or mistype (a
temperature of 60 000 K): a value outside it is refused, with the range in the message.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pfd_ase.calculators.labelers import KNOWN_LABELERS
from pfd_ase.explore import BAROSTATS, THERMOSTATS, ExploreTask
from pfd_ase.parallel import KINDS
from pfd_ase.selectors.filters import FrameFilter

__all__ = [
    "DEFAULTS",
    "EXPLORE_KEYS",
    "PLAUSIBLE_RANGES",
    "SCHEMA",
    "STAGE_DEFAULTS",
    "STAGE_SCHEMA",
    "Setting",
    "default_config_text",
    "key_names",
    "schema_defaults",
]


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
    item
        For a list of sections (``finetune.stages``): the schema of one entry.
    """

    default: Any
    doc: str
    item: Mapping[str, Any] | None = None


#: YAML names of the :class:`ExploreTask` fields that are named differently in a run
#: configuration (``steps`` would read as training steps there).
EXPLORE_KEYS: dict[str, str] = {"steps": "md_steps"}

#: Physically plausible ranges ``(low, high, unit)`` of MD settings (YAML names), inclusive:
#: a time step of 0.1-10 fs (0.002 is a time step in ps), temperatures of 1-10 000 K,
#: pressures of -50 to 500 GPa (tension to the Earth's core; 1000 is a pressure in bar).
#: The configuration refuses values outside them.
PLAUSIBLE_RANGES: dict[str, tuple[float, float, str]] = {
    "timestep_fs": (0.1, 10.0, "fs"),
    "temperatures_K": (1.0, 10000.0, "K"),
    "pressures_GPa": (-50.0, 500.0, "GPa"),
}


def _range_text(key: str) -> str:
    low, high, unit = PLAUSIBLE_RANGES[key]
    return f"{low:g} to {high:g} {unit}"


#: Defaults that :class:`ExploreTask` leaves to its caller.
_EXPLORE_CONFIG_DEFAULTS: dict[str, Any] = {"temperatures_K": [500.0], "seed": None}

_EXPLORE_DOCS: dict[str, str] = {
    "temperatures_K": (
        f"MD temperatures ({_range_text('temperatures_K')}): one walker per structure, "
        "temperature, pressure"
    ),
    "pressures_GPa": (
        f"MD pressures ({_range_text('pressures_GPa')}); null in the list = an NVT walker"
    ),
    "steps": "MD steps per walker (integer > 0)",
    "timestep_fs": f"MD time step ({_range_text('timestep_fs')})",
    "sample_every": "keep a frame every this many MD steps (integer, <= md_steps)",
    "thermostat": (
        f"thermostat of the walkers with pressure null: {', '.join(THERMOSTATS)} (nve = none)"
    ),
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
        out[f.name] = Setting(_yaml_value(_field_default(f)), _FILTER_DOCS[f.name])
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
    "labeler": (
        "the DFT code that labels frames (or any ASE calculator object, from Python); "
        "`labeler: gpaw` is short for {name: gpaw}"
    ),
    "base_model": (
        "the pre-trained model fine-tuned into the teacher; `base_model: chgnet` is short "
        "for {path: chgnet}"
    ),
    "init": "initial data: perturbed copies of the structures, labelled",
    "finetune": "the fine-tune loop (teacher): explore, filter, select, label, evaluate, train",
    "distill": "the distillation loop (student): teacher MD, compare, teacher labels, train",
    "explore": "the MD of the distillation (the teacher's; the student's with driver student)",
    "perturb": (
        "perturbed copies of the distillation's starting structures (repeated to "
        "explore.min_atoms), labelled by the teacher and added to the student's data before "
        "its first training"
    ),
    "executor": "where labelling and MD tasks run",
    "frame_filter": _EXPLORE_DOCS["frame_filter"],
    "dh_watch": (
        "extrapolation watch of the MD: per-atom dH (nats) against the dataset's descriptor "
        "bank; with max_dH set, only frames beyond it are candidates, and an iteration with "
        "none ends the stage (converged)"
    ),
}

#: Schema of one fine-tune stage (an entry of ``finetune.stages``).
STAGE_SCHEMA: dict[str, Any] = {
    "name": Setting(None, "stage name (run folder and step names); null = stage<N>"),
    "structures": Setting(None, f"starting structures of the MD: {_STRUCTURE_NAMES}"),
    **_explore_schema(),
    "max_iterations": Setting(3, "explore-select-label-train iterations at most (integer > 0)"),
    "n_select": Setting(10, "frames selected by entropy per iteration (integer > 0)"),
    "chunk_size": Setting(
        1,
        "frames added per round of the entropy selection (integer > 0); 1 = greedy, the most "
        "diverse set (bench/selection_efficiency.py)",
    ),
    "dh_watch": {
        "max_dH": Setting(
            None,
            "threshold on a frame's largest per-atom dH (nats, > 0; 2 marks what the model "
            "has not seen, supplement Fig. S13); null = no watch",
        ),
        "action": Setting(
            "mark",
            "mark (sampled frames beyond max_dH are the candidates) or stop (a walker stops "
            "at its first state beyond max_dH, which becomes a candidate)",
        ),
        "every": Setting(
            None, "also check dH every this many MD steps (integer > 0); null = sampled frames"
        ),
    },
}

#: The whole configuration: nested sections of :class:`Setting`.
SCHEMA: dict[str, Any] = {
    "workdir": Setting("runs/pfd", "run directory; a rerun resumes it"),
    "seed": Setting(0, "seed of every random choice: perturbations, MD, training (integer >= 0)"),
    "type_map": Setting(None, "elements of the trained models, e.g. [Si, O]; null = from data"),
    "structures": Setting(
        {},
        "named structures: {name: {bulk: {ase.build.bulk arguments}} or {file: path, index: n},"
        " optional repeat: [n1, n2, n3], vacancy: atom index} or {name: path} (a file)",
    ),
    "labeler": {
        "name": Setting("gpaw", f"DFT labeler: {', '.join(KNOWN_LABELERS)}"),
        "overrides": Setting({}, "labeler settings replacing its defaults (e.g. VASP INCAR)"),
        "timeout_s": Setting(
            None,
            "wall-time limit of one frame's labelling (s, > 0): a task past it is stopped and "
            "recorded as failed (cause timeout; `pfd-ase run --retry-failed` tries it again); "
            "null = none",
        ),
    },
    "base_model": {
        "path": Setting(
            "chgnet",
            "pre-trained model: a .pt/.pth file, a registry name, chgnet or 7net-0 (SevenNet-0)",
        ),
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
        "steps": Setting(
            20000,
            "training steps of each deepmd-kit fine-tuning (integer > 0; 20000 as in the PFD "
            "supplement)",
        ),
        "learning_rate": Setting(
            None,
            "deepmd-kit learning_rate section; null = 1e-3 -> 3.51e-8 every 200 steps "
            "(supplement), every steps/10 in runs under 2000 steps",
        ),
        "force_rmse_threshold_eV_A": Setting(
            0.06, "converged when the model's force RMSE on new frames is below this (eV/Å)"
        ),
        "virial": Setting(
            False,
            "fit stress labels too (deepmd-kit virial loss 0.02 -> 1): true or false; off by "
            "default, it swamped the forces of 4-8-atom cells in short fine-tunings",
        ),
        "stress_weight": Setting(
            None,
            "weight of the stress loss of a CHGNet or SevenNet fine-tuning (null: theirs, "
            "0.001 and 0.01; 0: stresses not fitted, e.g. where the labeler's stresses are "
            "not converged); deepmd-kit uses virial",
        ),
        "structure_weights": Setting(
            None,
            "how many times each labelled frame of a structure enters the teacher's training "
            "data, by structure name (integers >= 1), e.g. {diamond: 2}; null: every frame once",
        ),
        "chgnet_epochs": Setting(
            20,
            "epochs of each CHGNet or SevenNet fine-tuning; the best by validation loss is "
            "kept (integer > 0)",
        ),
        "stages": Setting(
            [], "exploration stages, in order; each entry has the keys below", item=STAGE_SCHEMA
        ),
    },
    "distill": {
        "enabled": Setting(True, "distil the teacher into a small student: true or false"),
        "steps": Setting(2000, "training steps of the student (integer > 0)"),
        "learning_rate": Setting(
            None,
            "deepmd-kit learning_rate section; null = 1e-2 -> 1e-8 every 2000 steps "
            "(supplement), every steps/10 in runs under 20000 steps",
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
        "virial": Setting(False, "fit the teacher's stresses too (virial loss): true or false"),
        "loss": Setting(
            None,
            "the student's deepmd-kit loss prefactors that differ from the defaults "
            "(start_pref_e / limit_pref_e 0.02 -> 1, start_pref_f / limit_pref_f 1000 -> 1, "
            "start_pref_v / limit_pref_v 0.02 -> 1 with virial), e.g. {limit_pref_e: 10}",
        ),
        "structure_weights": Setting(
            None,
            "how many times each teacher-labelled frame of a structure enters the student's "
            "training data, by structure name (integers >= 1), e.g. {diamond: 2}; null: every "
            "frame once",
        ),
        "init_from_previous": Setting(
            False,
            "start each iteration's student from the previous one (deepmd-kit --init-model) "
            "instead of from scratch: true or false",
        ),
        "sel": Setting(
            None,
            "neighbours the student keeps within its 6.5 Å cut-off (integer > 0); null = 100, "
            "enough for Si (78 in FCC); oxides need more (LATP: 108)",
        ),
        "perturb": {
            "n_perturb": Setting(
                0, "teacher-labelled perturbed copies of each structure (integer >= 0; 0 = none)"
            ),
            "cell_strain": Setting(0.03, "largest random cell strain component (fraction, >= 0)"),
            "displacement_A": Setting(
                0.05, "standard deviation of the atomic displacements (Å, >= 0)"
            ),
        },
        "explore": {
            "structures": Setting(None, f"starting structures of the MD: {_STRUCTURE_NAMES}"),
            "min_atoms": Setting(
                1,
                "repeat each starting structure until it holds at least this many atoms "
                "(integer > 0; the teacher is cheap, larger cells give the student more "
                "environments per frame)",
            ),
            "driver": Setting(
                "teacher",
                "what drives the MD after the first iteration: teacher, or student (the "
                "current student explores; the teacher labels where they disagree most)",
            ),
            "student_md": Setting(
                {},
                "with driver student: the MD settings below that differ for the student's "
                "walkers (e.g. {md_steps: 1000}: the student is ~20x faster than the teacher)",
            ),
            **_explore_schema(),
        },
    },
    "executor": {
        "kind": Setting("serial", f"where tasks run: {', '.join(KINDS)}"),
        "max_workers": Setting(2, "worker processes of process and local dask (integer > 0)"),
        "address": Setting(None, "dask scheduler address; null = a local cluster"),
        "folder": Setting("slurm_logs", "slurm: folder of submitit's logs"),
        "slurm": Setting({}, "slurm: submitit parameters (slurm_partition, timeout_min...)"),
    },
    "progress": Setting(True, "show progress bars: true or false"),
}


def schema_defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults of a (section of the) schema, as a fresh nested dict."""
    return {
        key: schema_defaults(node) if isinstance(node, Mapping) else copy.deepcopy(node.default)
        for key, node in schema.items()
    }


#: Default configuration (derived from :data:`SCHEMA`).
DEFAULTS: dict[str, Any] = schema_defaults(SCHEMA)
#: Default fine-tune stage (derived from :data:`SCHEMA`).
STAGE_DEFAULTS: dict[str, Any] = schema_defaults(STAGE_SCHEMA)


def key_names(schema: Mapping[str, Any]) -> set[str]:
    """Every key name of a (section of the) schema, at any depth."""
    out = set(schema)
    for node in schema.values():
        if isinstance(node, Mapping):
            out |= key_names(node)
        elif node.item is not None:
            out |= key_names(node.item)
    return out


# --------------------------------------------------------------------------- rendering
def default_config_text() -> str:
    """The default configuration as commented YAML: every key, its default, one line on it.

    Rendered from :data:`SCHEMA`, so it cannot drift from what
    :func:`~pfd_ase.workflow.config.load_config` accepts;
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
