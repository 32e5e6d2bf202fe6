"""Run configuration: defaults, loading (YAML/JSON) and validation before any expensive work.

A configuration is a nested dict. Every key must be known (a misspelt or unit-less key such
as ``temperature`` instead of ``temperatures_K`` is an error naming the right key), numbers
must be in range, structures referenced by the stages must exist, the elements must be in the
base model's type map, and the labeler must be set up (e.g. VASP command and POTCARs).
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STAGE_DEFAULTS: dict[str, Any] = {
    "name": None,
    "structures": None,  # names from config["structures"]; None = all
    "temperatures_K": [500.0],
    "pressures_GPa": [None],  # None = NVT
    "md_steps": 2000,
    "timestep_fs": 2.0,
    "sample_every": 100,
    "thermostat": "langevin",
    "barostat": "mtk",
    "max_iterations": 3,
    "n_select": 10,
    "chunk_size": 5,
}

DEFAULTS: dict[str, Any] = {
    "workdir": "runs/pfd",
    "seed": 0,
    "type_map": None,
    "structures": {},
    "labeler": {"name": "gpaw", "overrides": {}},
    "base_model": {"path": "chgnet", "head": None},
    "init": {"structures": None, "n_perturb": 4, "cell_strain": 0.03, "displacement_A": 0.1},
    "finetune": {
        "steps": 2000,
        "learning_rate": None,
        "force_rmse_threshold_eV_A": 0.06,
        "chgnet_epochs": 5,
        "stages": [],
    },
    "distill": {
        "enabled": True,
        "steps": 2000,
        "learning_rate": None,
        "max_iterations": 3,
        "n_frames": 20,
        "force_devi_threshold_eV_A": 0.05,
        "target_force_rmse_eV_A": 0.05,
        "min_improvement": 0.02,
        "compress": True,
        "explore": {
            "structures": None,
            "temperatures_K": [500.0],
            "pressures_GPa": [None],
            "md_steps": 2000,
            "timestep_fs": 2.0,
            "sample_every": 100,
            "thermostat": "langevin",
            "barostat": "mtk",
        },
    },
    "executor": {"kind": "serial", "max_workers": 2, "address": None},
    "progress": True,
}

# keys whose values are free-form (not checked against DEFAULTS)
_FREE = {
    ("labeler", "overrides"),
    ("structures",),
    ("finetune", "learning_rate"),
    ("distill", "learning_rate"),
}


class ConfigError(ValueError):
    """A configuration problem, found before any expensive work starts."""


def load_config(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read (YAML or JSON file, or a dict), merge onto :data:`DEFAULTS`, validate; return it."""
    if isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
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
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        base = path.parent
    labeler_obj = raw.pop("labeler", None) if _is_calculator(raw.get("labeler")) else None
    config = _merge(DEFAULTS, raw, ())
    if labeler_obj is not None:  # Python API: any ASE calculator object labels
        config["labeler"] = labeler_obj
    config["finetune"]["stages"] = [
        _merge(STAGE_DEFAULTS, stage, ("finetune", "stages", str(i)))
        for i, stage in enumerate(config["finetune"]["stages"])
    ]
    for spec in config["structures"].values():
        if isinstance(spec, dict) and "file" in spec and not Path(spec["file"]).is_absolute():
            spec["file"] = str(base / spec["file"])
    validate(config)
    return config


def _merge(defaults: Mapping[str, Any], given: Any, where: tuple[str, ...]) -> Any:
    if where in _FREE or not isinstance(defaults, Mapping):
        return copy.deepcopy(given)
    if not isinstance(given, Mapping):
        raise ConfigError(f"{_name(where)} must be a mapping, got {type(given).__name__}")
    out = copy.deepcopy(dict(defaults))
    for key, value in given.items():
        if key not in defaults:
            hint = difflib.get_close_matches(str(key), list(defaults), n=1, cutoff=0.4)
            raise ConfigError(
                f"unknown key {_name((*where, str(key)))!r}"
                + (f"; did you mean {_name((*where, hint[0]))!r}?" if hint else "")
                + f" (known: {', '.join(defaults)})"
            )
        if isinstance(defaults[key], Mapping) and (*where, key) not in _FREE:
            out[key] = _merge(defaults[key], value, (*where, key))
        else:
            out[key] = copy.deepcopy(value)
    return out


def _name(where: tuple[str, ...]) -> str:
    return ".".join(where) or "<top>"


def _positive(value: Any, where: str, integer: bool = False, zero_ok: bool = False) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(
            f"{where} must be a {'positive integer' if integer else 'positive number'}"
            f", got {value!r}"
        )


def _md_block(block: Mapping[str, Any], where: str) -> None:
    temps = block["temperatures_K"]
    if not isinstance(temps, list) or not temps:
        raise ConfigError(f"{where}.temperatures_K must be a non-empty list (K)")
    for t in temps:
        _positive(t, f"{where}.temperatures_K")
    press = block["pressures_GPa"]
    if not isinstance(press, list) or not press:
        raise ConfigError(f"{where}.pressures_GPa must be a non-empty list (GPa; null = NVT)")
    for p in press:
        if p is not None and not isinstance(p, (int, float)):
            raise ConfigError(f"{where}.pressures_GPa entries must be numbers (GPa) or null")
    _positive(block["md_steps"], f"{where}.md_steps", integer=True)
    _positive(block["timestep_fs"], f"{where}.timestep_fs")
    _positive(block["sample_every"], f"{where}.sample_every", integer=True)
    if block["sample_every"] > block["md_steps"]:
        raise ConfigError(f"{where}.sample_every must be <= md_steps")


def validate(config: Mapping[str, Any], check_setup: bool = True) -> None:
    """Raise :class:`ConfigError` for the first problem found.

    With ``check_setup`` also check that the base model exists and knows every element,
    and that the labeler is usable (e.g. VASP command and POTCARs) — cheap checks only.
    """
    structures = config["structures"]
    if not isinstance(structures, Mapping) or not structures:
        raise ConfigError("structures: at least one named structure is needed")
    from pfd_ase.structures import build_structure

    built = {}
    for name, spec in structures.items():
        try:
            built[name] = build_structure(spec)
        except Exception as exc:
            raise ConfigError(f"structures.{name}: {exc}") from exc

    def check_names(names: Any, where: str) -> None:
        if names is None:
            return
        if not isinstance(names, list) or not names:
            raise ConfigError(f"{where} must be a non-empty list of structure names or null")
        missing = [n for n in names if n not in structures]
        if missing:
            raise ConfigError(f"{where}: unknown structures {missing}; known: {list(structures)}")

    _positive(config["seed"], "seed", integer=True, zero_ok=True)
    init = config["init"]
    check_names(init["structures"], "init.structures")
    _positive(init["n_perturb"], "init.n_perturb", integer=True)
    _positive(init["cell_strain"], "init.cell_strain", zero_ok=True)
    _positive(init["displacement_A"], "init.displacement_A", zero_ok=True)

    ft = config["finetune"]
    _positive(ft["steps"], "finetune.steps", integer=True)
    _positive(ft["force_rmse_threshold_eV_A"], "finetune.force_rmse_threshold_eV_A")
    _positive(ft["chgnet_epochs"], "finetune.chgnet_epochs", integer=True)
    for i, stage in enumerate(ft["stages"]):
        where = f"finetune.stages[{i}]"
        check_names(stage["structures"], f"{where}.structures")
        _md_block(stage, where)
        for key in ("max_iterations", "n_select", "chunk_size"):
            _positive(stage[key], f"{where}.{key}", integer=True)

    ds = config["distill"]
    if ds["enabled"]:
        for key in ("steps", "max_iterations", "n_frames"):
            _positive(ds[key], f"distill.{key}", integer=True)
        _positive(
            ds["force_devi_threshold_eV_A"], "distill.force_devi_threshold_eV_A", zero_ok=True
        )
        _positive(ds["target_force_rmse_eV_A"], "distill.target_force_rmse_eV_A")
        _positive(ds["min_improvement"], "distill.min_improvement", zero_ok=True)
        check_names(ds["explore"]["structures"], "distill.explore.structures")
        _md_block(ds["explore"], "distill.explore")

    from pfd_ase.parallel import KINDS

    if config["executor"]["kind"] not in KINDS:
        raise ConfigError(
            f"executor.kind must be one of {KINDS}, got {config['executor']['kind']!r}"
        )

    symbols = sorted({s for a in built.values() for s in a.get_chemical_symbols()})
    type_map = config["type_map"]
    if type_map is not None:
        missing = sorted(set(symbols) - set(type_map))
        if missing:
            raise ConfigError(f"type_map {type_map} lacks elements {missing} of the structures")
    if check_setup:
        _check_base_model(config["base_model"], symbols)
        _check_labeler(config["labeler"], symbols)


def is_chgnet(path: str) -> bool:
    """True when the base model is CHGNet (the pre-trained name or a CHGNet checkpoint)."""
    p = str(path)
    return p.lower() in ("chgnet", "chgnet-0.3.0") or p.endswith(".pth.tar")


def _check_base_model(base: Mapping[str, Any], symbols: list[str]) -> None:
    path = base.get("path")
    if not path:
        raise ConfigError(
            "base_model.path is required (a checkpoint, a registry name, or 'chgnet')"
        )
    if is_chgnet(path):
        if base.get("head"):
            raise ConfigError("base_model.head applies to deepmd-kit multi-task models, not CHGNet")
        try:
            import chgnet  # noqa: F401
        except ImportError as exc:
            raise ConfigError("base model CHGNet needs: pip install 'pfd_ase[chgnet]'") from exc
        return
    if not Path(path).exists():
        from pfd_ase.training.stages import resolve_base_model

        try:
            resolve_base_model(path)
        except Exception as exc:
            raise ConfigError(f"base_model.path: {exc}") from exc
        return
    from pfd_ase.calculators.backends import _alias_map, _checkpoint_params, list_heads

    params = _checkpoint_params(Path(path)) if str(path).endswith(".pt") else None
    head = base.get("head")
    if params is not None:
        heads = list_heads(path)
        if heads and head and head.upper() != "RANDOM":
            if head.lower() not in _alias_map(params["model_dict"]):
                raise ConfigError(f"base_model.head {head!r} not in {path}; heads: {heads}")
        type_map = (
            params["shared_dict"].get("type_map_all")
            if heads and "shared_dict" in params
            else params.get("type_map")
        )
        if isinstance(type_map, list):
            missing = sorted(set(symbols) - set(type_map))
            if missing:
                raise ConfigError(
                    f"elements {missing} are not in the base model's type map {type_map} ({path})"
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
