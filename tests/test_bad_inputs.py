"""Bad inputs, tried as a new user would: every one is refused before any work starts.

Each configuration case is a YAML file run through :func:`pfd_ase.workflow.run` (the
error type: :class:`~pfd_ase.workflow.ConfigError`, its message naming the offending key or
file) and through ``pfd-ase run`` (exit status 2, the same message); the run directory must
not exist afterwards and the tripwires (the run lock, labelling, training, selection) must
not have fired. The command-line cases check the one-stage commands the same way.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import bulk
from ase.io import write
from ase.neighborlist import neighbor_list
from typer.testing import CliRunner

from pfd_ase.cli import app
from pfd_ase.data import write_frames
from pfd_ase.workflow import ConfigError, load_config, run
from pfd_ase.workflow.config import ConfigWarning

runner = CliRunner()
needs_gpaw = pytest.mark.skipif(importlib.util.find_spec("gpaw") is None, reason="gpaw missing")
needs_chgnet = pytest.mark.skipif(
    importlib.util.find_spec("chgnet") is None, reason="chgnet missing"
)
VASP_ENV = ("ASE_VASP_COMMAND", "VASP_COMMAND", "VASP_SCRIPT", "VASP_PP_PATH")

SI = {"bulk": {"name": "Si", "crystalstructure": "diamond", "a": 5.43, "cubic": True}}
GE = {"bulk": {"name": "Ge", "crystalstructure": "diamond", "a": 5.66, "cubic": True}}
CU = {"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}}
SI_FCC = {"bulk": {"name": "Si", "crystalstructure": "fcc", "a": 3.87, "cubic": True}}

BASE: dict[str, Any] = {
    "seed": 1,
    "structures": {"diamond": SI},
    "labeler": {"name": "sw"},
    "base_model": {"path": "chgnet"},
    "finetune": {"stages": [{"name": "s1", "md_steps": 20, "sample_every": 5}]},
    "distill": {"explore": {"md_steps": 20, "sample_every": 5}},
    "progress": False,
}


class Tripwire(AssertionError):
    """Expensive work started although the input was bad."""


@pytest.fixture(autouse=True)
def tripwires(monkeypatch):
    """Every entry point of expensive work raises: nothing may reach them."""

    def trip(name):
        def fail(*args, **kwargs):
            raise Tripwire(f"expensive work started: {name}")

        return fail

    import pfd_ase.label
    import pfd_ase.selectors
    import pfd_ase.training.evaluate
    import pfd_ase.training.stages
    import pfd_ase.workflow.lock

    monkeypatch.setattr(pfd_ase.workflow.lock, "run_lock", trip("run_lock (the workflow)"))
    monkeypatch.setattr(pfd_ase.label, "label_frames", trip("label_frames"))
    for name in ("pretrain", "finetune", "train_student"):
        monkeypatch.setattr(pfd_ase.training.stages, name, trip(name))
    monkeypatch.setattr(pfd_ase.training.evaluate, "evaluate", trip("evaluate"))
    for name in ("EntropySelector", "RandomSelector"):
        monkeypatch.setattr(pfd_ase.selectors, name, trip(name))


def _merge(base: dict, change: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in change.items():
        if key == "structures":  # replaced as a whole
            out[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and value:
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_file(tmp_path: Path, change: dict | None = None, stage: dict | None = None) -> Path:
    """A YAML configuration: :data:`BASE` with ``change`` merged in (and ``stage`` into the
    first fine-tune stage), its run directory ``tmp_path/run``."""
    config = _merge({**BASE, "workdir": str(tmp_path / "run")}, change or {})
    if stage:
        config["finetune"]["stages"] = [{**config["finetune"]["stages"][0], **stage}]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _text(result) -> str:
    """The CLI output as one line (typer wraps long messages in boxes)."""
    return " ".join(result.output.replace("│", " ").split())


def assert_refused(
    path: Path, message: str, cause: type | None = None, workdir: Path | None = None
) -> ConfigError:
    """``run(path)`` and ``pfd-ase run path`` refuse with ``message`` before any work (and
    ``workdir``, by default the file's, is left as it was)."""
    workdir = workdir or Path(yaml.safe_load(path.read_text())["workdir"])
    existed = workdir.exists()
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*")) if existed else None
    with pytest.raises(ConfigError, match=message) as info:
        run(path)
    if cause is not None:
        assert isinstance(info.value.__cause__, cause), repr(info.value.__cause__)
    result = runner.invoke(app, ["run", str(path)], terminal_width=400)
    assert result.exit_code == 2, result.output
    assert re.search(message, _text(result)), result.output
    assert not isinstance(result.exception, Tripwire)
    if existed:  # the run directory is left exactly as it was
        assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before
    else:
        assert not workdir.exists()
    return info.value


# --------------------------------------------------------------------------- model files
def _fake_deepmd_checkpoint(path: Path, type_map=None, heads=None) -> Path:
    """A deepmd-kit PyTorch checkpoint as far as validation reads it (its model_params)."""
    import torch

    if heads:
        params = {"model_dict": {h: {"type_map": ["Si", "Cu"]} for h in heads}}
    else:
        params = {"type_map": list(type_map)}
    torch.save({"model": {"_extra_state": {"model_params": params}}}, path)
    return path


class _Mkdir:
    """Unpickles to ``os.mkdir(path)``: proof that a file was (or was not) unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


# --------------------------------------------------------------------------- the matrix
#: (id, change, stage change, message regex): plain configuration changes.
CASES = [
    # keys
    (
        "unknown-top-key",
        {"labeller": {"name": "sw"}},
        None,
        r"unknown key 'labeller'; did you mean 'labeler'",
    ),
    (
        "unknown-stage-key",
        {},
        {"timestep": 1.0},
        r"unknown key 'finetune\.stages\.0\.timestep'; "
        r"did you mean 'finetune\.stages\.0\.timestep_fs'",
    ),
    ("unit-less-key", {"temperature": 300}, None, r"unknown key 'temperature'"),
    (
        "unknown-filter-key",
        {},
        {"frame_filter": {"max_lenght_ratio": 2}},
        r"did you mean 'finetune\.stages\.0\.frame_filter\.max_length_ratio'",
    ),
    (
        "section-as-number",
        {"init": 4},
        None,
        r"init must be a mapping of the keys structures, n_perturb, cell_strain, "
        r"displacement_A; got int 4",
    ),
    (
        "labeler-not-a-mapping",
        {"labeler": 5},
        None,
        r"labeler must be a mapping of the keys name, overrides",
    ),
    (
        "unknown-labeler",
        {"labeler": {"name": "vaspp"}},
        None,
        r"labeler: unknown labeler 'vaspp'; known labelers: vasp, gpaw",
    ),
    # signs: temperatures, time steps, steps
    (
        "negative-temperature",
        {},
        {"temperatures_K": [-5.0]},
        r"finetune\.stages\[0\]\.temperatures_K must be positive",
    ),
    (
        "zero-temperature",
        {},
        {"temperatures_K": [300.0, 0.0]},
        r"finetune\.stages\[0\]\.temperatures_K must be positive",
    ),
    (
        "zero-timestep",
        {},
        {"timestep_fs": 0},
        r"finetune\.stages\[0\]\.timestep_fs must be positive",
    ),
    (
        "negative-timestep",
        {},
        {"timestep_fs": -1.0},
        r"finetune\.stages\[0\]\.timestep_fs must be positive",
    ),
    (
        "zero-md-steps",
        {},
        {"md_steps": 0},
        r"finetune\.stages\[0\]\.md_steps must be a positive integer",
    ),
    (
        "negative-distill-md-steps",
        {"distill": {"explore": {"md_steps": -10}}},
        None,
        r"distill\.explore\.md_steps must be a positive integer",
    ),
    (
        "zero-distill-min-atoms",
        {"distill": {"explore": {"min_atoms": 0}}},
        None,
        r"distill\.explore\.min_atoms must be a positive integer",
    ),
    (
        "unknown-distill-driver",
        {"distill": {"explore": {"driver": "dft"}}},
        None,
        r"distill\.explore\.driver must be one of teacher, student, got 'dft'",
    ),
    (
        "student-md-without-student-driver",
        {"distill": {"explore": {"student_md": {"md_steps": 500}}}},
        None,
        r"distill\.explore\.student_md is set but driver is teacher",
    ),
    (
        "unknown-student-md-setting",
        {"distill": {"explore": {"driver": "student", "student_md": {"steps": 500}}}},
        None,
        r"distill\.explore\.student_md: unknown MD settings \['steps'\]",
    ),
    (
        "implausible-student-md-timestep",
        {"distill": {"explore": {"driver": "student", "student_md": {"timestep_fs": 0.001}}}},
        None,
        r"distill\.explore\.student_md\.timestep_fs",
    ),
    (
        "zero-training-steps",
        {"finetune": {"steps": 0}},
        None,
        r"finetune\.steps must be a positive integer",
    ),
    (
        "negative-stress-weight",
        {"finetune": {"stress_weight": -1}},
        None,
        r"finetune\.stress_weight must be a finite non-negative number, got -1",
    ),
    (
        "nan-cell-strain",
        {"init": {"cell_strain": float("nan")}},
        None,
        r"init\.cell_strain must be a finite non-negative number \(fraction\), got nan",
    ),
    (
        "negative-student-steps",
        {"distill": {"steps": -1}},
        None,
        r"distill\.steps must be a positive integer",
    ),
    (
        "zero-perturbations",
        {"init": {"n_perturb": 0}},
        None,
        r"init\.n_perturb must be a positive integer",
    ),
    (
        "sample-every-above-steps",
        {},
        {"md_steps": 10, "sample_every": 20},
        r"finetune\.stages\[0\]\.sample_every .* <= md_steps",
    ),
    # plausible ranges (units mixed up)
    (
        "timestep-in-ps",
        {},
        {"timestep_fs": 0.002},
        r"finetune\.stages\[0\]\.timestep_fs 0\.002 is outside the plausible range "
        r"0\.1 to 10 fs \(given in ps\? 0\.002 ps = 2 fs\)",
    ),
    (
        "temperature-60000K",
        {},
        {"temperatures_K": [300, 60000]},
        r"finetune\.stages\[0\]\.temperatures_K 60000 is outside the plausible range 1 to 10000 K",
    ),
    (
        "pressure-in-bar",
        {},
        {"pressures_GPa": [None, 10000]},
        r"finetune\.stages\[0\]\.pressures_GPa 10000 is outside the plausible range "
        r"-50 to 500 GPa \(given in bar\? 10000 bar = 1 GPa\)",
    ),
    (
        "pressure-too-negative",
        {"distill": {"explore": {"pressures_GPa": [-100.0]}}},
        None,
        r"distill\.explore\.pressures_GPa -100 is outside the plausible range -50 to 500 GPa",
    ),
    # names and elements
    (
        "unknown-structure-name",
        {},
        {"structures": ["diamnod"]},
        r"finetune\.stages\[0\]\.structures: unknown structures \['diamnod'\]",
    ),
    (
        "type-map-lacks-element",
        {"type_map": ["Si"], "structures": {"diamond": SI, "ge": GE}},
        None,
        r"type_map \['Si'\] lacks elements \['Ge'\]",
    ),
    (
        "structure-bad-shape",
        {"structures": {"diamond": 5}},
        None,
        r"structures\.diamond: a structure is a file path .* got 5",
    ),
    (
        "structure-unknown-key",
        {"structures": {"diamond": {"bulk": SI["bulk"], "repaet": [2, 2, 2]}}},
        None,
        r"structures\.diamond: unknown structure keys \['repaet'\]",
    ),
    # models
    (
        "chgnet-name-unknown",
        {"base_model": {"path": "CHGNet-0.4.0"}},
        None,
        r"base_model: no pre-trained CHGNet named 'CHGNet-0.4\.0': the chgnet wheel ships",
    ),
    (
        "chgnet-has-no-head",
        {"base_model": {"path": "chgnet", "head": "sw"}},
        None,
        r"base_model: CHGNet models have a single energy head; do not pass head='sw'",
    ),
    (
        "chgnet-labeler-model-unknown",
        {"labeler": {"name": "chgnet", "overrides": {"model": "CHGNet-9"}}},
        None,
        r"labeler: no pre-trained CHGNet named 'CHGNet-9'",
    ),
]


@pytest.mark.parametrize(
    ("change", "stage", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_configuration_is_refused(tmp_path, change, stage, message):
    assert_refused(config_file(tmp_path, change, stage), message)


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"workdir: {tmp_path / 'run'}\nlabeler: [unclosed\n")
    assert_refused(path, rf"{re.escape(str(path))}: cannot parse", workdir=tmp_path / "run")
    path.write_text(f"workdir: {tmp_path / 'run'}\n- a list\n")
    assert_refused(path, rf"{re.escape(str(path))}: cannot parse", workdir=tmp_path / "run")


# --------------------------------------------------------------------------- structures
def test_structure_file_that_does_not_parse(tmp_path):
    (tmp_path / "broken.cif").write_text("data_broken\n_cell_length_a five\nloop_\n_atom\n")
    path = config_file(tmp_path, {"structures": {"broken": {"file": "broken.cif"}}})
    assert_refused(path, rf"structures\.broken: cannot read structure file {tmp_path}/broken\.cif")
    path = config_file(tmp_path, {"structures": {"gone": "missing.extxyz"}})
    assert_refused(path, rf"structures\.gone: structure file not found: {tmp_path}/missing\.extxyz")


def test_overlapping_atoms_in_a_start_structure(tmp_path):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms += Atoms("Si", positions=[atoms.positions[3] + [0.2, 0.0, 0.0]])  # atom 8 on atom 3
    write(tmp_path / "dup.extxyz", atoms)
    path = config_file(tmp_path, {"structures": {"diamond": SI, "dup": "dup.extxyz"}})
    assert_refused(path, r"structures\.dup: atoms 3 and 8 \(Si, Si\) are 0\.200 Å apart")
    squeezed = {"bulk": {"name": "Si", "crystalstructure": "fcc", "a": 1.0}}
    path = config_file(tmp_path, {"structures": {"squeezed": squeezed}})
    assert_refused(path, r"structures\.squeezed: atom 0 and its periodic image .* 0\.707 Å apart")


def test_a_structure_may_be_a_plain_path(tmp_path):
    """``diamond: diamond.cif`` is a file (relative to the config); other shapes are
    refused with the shapes that are accepted."""
    write(tmp_path / "diamond.cif", bulk("Si", "diamond", a=5.43, cubic=True))
    config = load_config(config_file(tmp_path, {"structures": {"diamond": "diamond.cif"}}))
    assert config["structures"]["diamond"] == {"file": str(tmp_path / "diamond.cif")}
    path = config_file(tmp_path, {"structures": {"diamond": ["diamond.cif"]}})
    assert_refused(path, r"structures\.diamond: a structure is a file path \(any file ASE reads\)")


def test_labeler_and_base_model_shorthands(tmp_path):
    path = config_file(tmp_path)
    text = path.read_text().replace("labeler:\n  name: sw\n", "labeler: sw\n")
    text = text.replace("base_model:\n  path: chgnet\n", "base_model: chgnet\n")
    path.write_text(text)
    config = load_config(path)
    assert config["labeler"] == {"name": "sw", "overrides": {}, "timeout_s": None}
    assert config["base_model"] == {"path": "chgnet", "head": None}


# --------------------------------------------------------------------------- models
def test_unknown_element_for_the_models_type_map(tmp_path):
    model = _fake_deepmd_checkpoint(tmp_path / "si_only.pt", type_map=["Si"])
    change = {"structures": {"diamond": SI, "ge": GE}, "base_model": {"path": str(model)}}
    assert_refused(
        config_file(tmp_path, change),
        rf"elements \['Ge'\] are not in the base model's type map \['Si'\] \({model}\)",
    )


def test_head_the_model_lacks(tmp_path):
    model = _fake_deepmd_checkpoint(tmp_path / "multi.pt", heads=["sw", "emt"])
    change = {"base_model": {"path": str(model), "head": "omat"}}
    assert_refused(
        config_file(tmp_path, change),
        rf"base_model: no head named 'omat' in {model}; available heads: \['sw', 'emt'\]",
    )
    change = {"base_model": {"path": str(model)}}
    assert_refused(config_file(tmp_path, change), rf"{model} is a multi-task model: choose a head")


def test_missing_model_checkpoint(tmp_path):
    from pfd_ase.models import ModelNotFoundError

    missing = tmp_path / "models" / "DPA-3.1-3M.pt"
    change = {"base_model": {"path": str(missing), "head": "Omat"}}
    assert_refused(
        config_file(tmp_path, change),
        rf"base_model: model file not found: {missing}",
        cause=ModelNotFoundError,
    )


def test_corrupt_model_checkpoints(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage" * 100)
    change = {"base_model": {"path": str(tmp_path / "bad.pt")}}
    assert_refused(
        config_file(tmp_path, change),
        rf"base_model: cannot read deepmd-kit checkpoint {tmp_path}/bad\.pt: damaged or not a "
        "torch file",
    )
    import torch

    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")  # a torch file, not deepmd's
    change = {"base_model": {"path": str(tmp_path / "other.pt")}}
    assert_refused(config_file(tmp_path, change), rf"{tmp_path}/other\.pt is not a deepmd-kit")


@needs_chgnet
def test_corrupt_or_unsafe_chgnet_checkpoint_is_not_unpickled(tmp_path):
    import torch

    (tmp_path / "bad.pth.tar").write_bytes(b"\x00garbage" * 100)
    change = {"base_model": {"path": str(tmp_path / "bad.pth.tar")}}
    assert_refused(
        config_file(tmp_path, change),
        rf"base_model\.path: cannot read CHGNet checkpoint {tmp_path}/bad\.pth\.tar",
    )
    marker = tmp_path / "unpickled"
    torch.save({"model": _Mkdir(str(marker))}, tmp_path / "evil.pth.tar")
    change = {"base_model": {"path": str(tmp_path / "evil.pth.tar")}}
    assert_refused(
        config_file(tmp_path, change),
        rf"base_model\.path: {tmp_path}/evil\.pth\.tar needs the Python object \S*mkdir to load"
        r".*not unpickled",
    )
    assert not marker.exists()  # weights_only: the file's code never ran
    torch.save({"state_dict": {}}, tmp_path / "half.pth.tar")
    change = {"base_model": {"path": str(tmp_path / "half.pth.tar")}}
    assert_refused(config_file(tmp_path, change), r"half\.pth\.tar is not a CHGNet checkpoint")


# --------------------------------------------------------------------------- labelers
@pytest.fixture
def vasp_env(tmp_path, monkeypatch):
    """POTCARs for Si only (one-line files plus the LEXCH line ASE re-reads)."""
    for env in VASP_ENV:
        monkeypatch.delenv(env, raising=False)
    potcar = tmp_path / "pp" / "potpaw_PBE" / "Si" / "POTCAR"
    potcar.parent.mkdir(parents=True)
    potcar.write_text(" PAW_PBE Si test\n   LEXCH  = PE\n")
    monkeypatch.setenv("VASP_PP_PATH", str(tmp_path / "pp"))
    return tmp_path / "pp"


def test_missing_vasp_command(tmp_path, vasp_env):
    from pfd_ase.calculators.labelers import LabelerSetupError

    path = config_file(tmp_path, {"labeler": {"name": "vasp"}})
    assert_refused(path, r"labeler: no VASP command: .* ASE_VASP_COMMAND", LabelerSetupError)


def test_missing_potcar_for_one_element(tmp_path, vasp_env, monkeypatch):
    from pfd_ase.calculators.labelers import LabelerSetupError

    monkeypatch.setenv("VASP_COMMAND", "vasp_std")
    change = {"labeler": {"name": "vasp"}, "structures": {"diamond": SI, "germanium": GE}}
    assert_refused(
        config_file(tmp_path, change),
        rf"labeler: no POTCAR for Ge under VASP_PP_PATH={vasp_env}",
        LabelerSetupError,
    )


def test_vasp_override_typo_is_not_written_into_the_incar(tmp_path, vasp_env, monkeypatch):
    monkeypatch.setenv("VASP_COMMAND", "vasp_std")
    change = {"labeler": {"name": "vasp", "overrides": {"encutt": 520}}}
    assert_refused(
        config_file(tmp_path, change),
        r"labeler: unknown vasp setting 'encutt' in the labeler overrides; did you mean "
        r"'encut'\? .* custom: \{ENCUTT: value\}",
    )
    change = {"labeler": {"name": "vasp", "overrides": {"ENCUT": 520}}}
    assert_refused(config_file(tmp_path, change), r"lower-case keywords, 'encut'")
    ok = {"labeler": {"name": "vasp", "overrides": {"encut": 520, "custom": {"NEWTAG": 1}}}}
    load_config(config_file(tmp_path, ok))  # known tags and custom ones pass


@needs_gpaw
def test_gpaw_override_typo_fails_validation(tmp_path):
    change = {"labeler": {"name": "gpaw", "overrides": {"ecut": 400}}}
    path = config_file(tmp_path, change)
    message = r"labeler: unknown gpaw setting 'ecut' .* mode: \{name: pw, ecut: 400\}"
    assert_refused(path, message)
    result = runner.invoke(app, ["validate", str(path)], terminal_width=400)
    assert result.exit_code == 2 and re.search(message, _text(result)), result.output
    change = {"labeler": {"name": "gpaw", "overrides": {"mode": {"name": "pww", "ecut": 400}}}}
    assert_refused(config_file(tmp_path, change), r"labeler: gpaw labeler with overrides .*pww")
    change = {"labeler": {"name": "gpaw", "overrides": {"mode": {"name": "pw", "ecut": 400}}}}
    assert load_config(config_file(tmp_path, change))["labeler"]["overrides"]["mode"]["ecut"] == 400


def test_labeler_shorthand_for_gpaw(tmp_path):
    path = config_file(tmp_path)
    path.write_text(path.read_text().replace("labeler:\n  name: sw\n", "labeler: gpaw\n"))
    if importlib.util.find_spec("gpaw") is None:
        assert_refused(path, r"labeler: the gpaw labeler needs 'gpaw'")
    else:
        assert load_config(path)["labeler"] == {"name": "gpaw", "overrides": {}, "timeout_s": None}


# --------------------------------------------------------------------------- the student
def _most_neighbours(spec: dict, rcut: float) -> int:
    from pfd_ase.structures import build_structure

    atoms = build_structure(spec)
    return int(np.bincount(neighbor_list("i", atoms, rcut)).max())


#: A student ``sel`` of 80 (the value before close-packed Si needed 100): fcc Cu (86 atoms
#: within 6.5 Å) exceeds it, fcc Si (78) fits with under 10 % headroom.
SMALL_SEL = 80


def test_student_sel_too_small_for_the_densest_phase(tmp_path, monkeypatch):
    """fcc Cu has more atoms within the student's rcut than its sel: measured, refused."""
    from pfd_ase.training.deepmd import STUDENT_DESCRIPTOR

    monkeypatch.setitem(STUDENT_DESCRIPTOR, "sel", SMALL_SEL)
    rcut, sel = STUDENT_DESCRIPTOR["rcut"], STUDENT_DESCRIPTOR["sel"]
    most = _most_neighbours(CU, rcut)
    assert most > sel  # the premise, measured independently of pfd_ase
    change = {"structures": {"diamond": SI, "copper": CU}}
    assert_refused(
        config_file(tmp_path, change),
        rf"distill\.explore\.structures: .*sel = {sel} neighbours per atom; structures\.copper "
        rf"has {most} atoms within {rcut:g} Å",
    )
    # the student does not see copper: fine; no student at all: fine
    student_diamond = {"distill": {"explore": {"structures": ["diamond"]}}}
    load_config(config_file(tmp_path, {**change, **student_diamond}))
    load_config(config_file(tmp_path, {**change, "distill": {"enabled": False}}))
    # a larger sel of its own: fine; one that is still too small: refused, naming enough
    load_config(config_file(tmp_path, {**change, "distill": {"sel": most + 20}}))
    assert_refused(
        config_file(tmp_path, {**change, "distill": {"sel": most - 1}}),
        rf"sel = {most - 1} neighbours.*raise distill\.sel \({int(most * 1.1) + 1} leaves",
    )
    assert_refused(config_file(tmp_path, {**change, "distill": {"sel": 0}}), "sel")


def test_student_sel_reaches_the_student_input(tmp_path):
    """distill.sel becomes the se_atten_v2 descriptor's sel of the student's training input."""
    from pfd_ase.training import deepmd as dp
    from pfd_ase.workflow.config import student_training

    config = load_config(config_file(tmp_path, {"distill": {"sel": 140}}))
    assert student_training(config).sel == 140
    assert student_training(load_config(config_file(tmp_path, {}))).sel is None
    cfg = dp.student_input(["Si"], ["data"], descriptor={"sel": 140})
    assert cfg["model"]["descriptor"]["sel"] == 140


def test_student_loss_prefactors_are_checked_and_kept(tmp_path):
    """distill.loss reaches the student's TrainConfig; unknown or negative ones are refused."""
    from pfd_ase.workflow.config import student_training

    config = load_config(config_file(tmp_path, {"distill": {"loss": {"limit_pref_e": 10}}}))
    assert student_training(config).loss == {"limit_pref_e": 10.0}
    assert student_training(load_config(config_file(tmp_path, {}))).loss is None
    bad = {"limit_pref_energy": 10}
    assert_refused(config_file(tmp_path, {"distill": {"loss": bad}}), "unknown prefactors")
    for bad in ({"start_pref_f": -1}, {"limit_pref_e": float("nan")}):
        refused = "finite non-negative number"
        assert_refused(config_file(tmp_path, {"distill": {"loss": bad}}), refused)


@pytest.mark.parametrize("block", ["finetune", "distill"])
def test_structure_weights_are_checked_and_kept(tmp_path, block):
    """finetune.structure_weights reaches the teacher's TrainConfig, distill's the
    student's; weights of unknown structures and weights that are not positive integers are
    refused."""
    from pfd_ase.workflow.config import student_training, teacher_training

    training = teacher_training if block == "finetune" else student_training
    change = {block: {"structure_weights": {"diamond": 2}}}
    assert training(load_config(config_file(tmp_path, change))).structure_weights == {"diamond": 2}
    assert training(load_config(config_file(tmp_path, {}))).structure_weights is None
    bad = {block: {"structure_weights": {"fcc": 2}}}
    assert_refused(config_file(tmp_path, bad), rf"{block}.structure_weights: unknown .*'fcc'")
    for weight in (0, 1.5, True):
        bad = {block: {"structure_weights": {"diamond": weight}}}
        assert_refused(config_file(tmp_path, bad), "structure_weights: diamond must be a positive")


def test_student_sel_with_little_headroom_is_a_warning(tmp_path, monkeypatch):
    from pfd_ase.training.deepmd import STUDENT_DESCRIPTOR

    monkeypatch.setitem(STUDENT_DESCRIPTOR, "sel", SMALL_SEL)
    rcut, sel = STUDENT_DESCRIPTOR["rcut"], STUDENT_DESCRIPTOR["sel"]
    most = _most_neighbours(SI_FCC, rcut)
    assert sel >= most > sel / 1.1
    path = config_file(tmp_path, {"structures": {"fcc": SI_FCC}})
    with pytest.warns(ConfigWarning, match=rf"structures\.fcc has {most} atoms .* headroom"):
        load_config(path)
    result = runner.invoke(app, ["validate", str(path)], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "warning: the student" in result.output and f"{path}: OK" in result.output


def test_student_sel_covers_close_packed_silicon(tmp_path):
    """The silicon recipe's student explores FCC and HCP Si: no warning with the real sel."""
    import warnings

    path = config_file(tmp_path, {"structures": {"fcc": SI_FCC}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        load_config(path)


# --------------------------------------------------------------------------- run directory
def test_workdir_made_with_other_settings(tmp_path):
    from pfd_ase.workflow.state import RunState

    old = load_config(config_file(tmp_path, {"labeler": {"name": "tersoff"}}))
    RunState(old["workdir"], old).save_summary()
    summary = Path(old["workdir"]) / "summary.json"
    stamp = summary.stat().st_mtime_ns
    path = config_file(tmp_path)  # the same run directory, labelled by sw
    assert_refused(
        path,
        rf"workdir {tmp_path}/run was labelled by another labeler \(tersoff with overrides "
        r"\{\} there, sw with \{\} here\): a rerun would discard and redo every labelled frame",
    )
    change = {"labeler": {"name": "tersoff"}, "structures": {"other": SI}}
    assert_refused(
        config_file(tmp_path, change),
        rf"workdir {tmp_path}/run holds a run of other structures \(\['diamond'\]",
    )
    assert summary.stat().st_mtime_ns == stamp and not (Path(old["workdir"]) / "state").exists()
    # other changes are allowed (dependent steps are redone) and listed by validate
    path = config_file(tmp_path, {"labeler": {"name": "tersoff"}, "finetune": {"steps": 7}})
    result = runner.invoke(app, ["validate", str(path)], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "note:" in result.output and "finetune.steps" in result.output


# --------------------------------------------------------------------------- one-stage commands
def test_select_more_frames_than_candidates(tmp_path):
    frames = [bulk("Cu", "fcc", a=3.6 + 0.01 * i) for i in range(16)]
    write_frames(tmp_path / "cand.extxyz", frames)
    out = tmp_path / "sel.extxyz"
    result = runner.invoke(
        app, ["select", str(tmp_path / "cand.extxyz"), "-n", "500", "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert "-n 500 asks for more frames than the 16 candidates" in _text(result)
    assert "cand.extxyz" in _text(result) and "pass -n 16 or fewer" in _text(result)
    assert not out.exists() and not isinstance(result.exception, Tripwire)


@pytest.mark.parametrize(
    "command",
    [
        ["finetune", "chgnet", "{frames}", "--workdir", "{work}"],
        ["student", "{frames}", "--workdir", "{work}"],
        ["evaluate", "chgnet", "{frames}"],
        ["pretrain", "--dataset", "si={frames}", "--workdir", "{work}"],
    ],
    ids=["finetune", "student", "evaluate", "pretrain"],
)
def test_dataset_without_energies(tmp_path, command):
    frames = [bulk("Si", "diamond", a=5.43), bulk("Si", "diamond", a=5.44)]
    write_frames(tmp_path / "unlabelled.extxyz", frames)
    args = [a.format(frames=tmp_path / "unlabelled.extxyz", work=tmp_path / "w") for a in command]
    result = runner.invoke(app, args, terminal_width=400)
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'unlabelled.extxyz'}: frame 0 has no energy and no forces" in _text(result)
    assert not (tmp_path / "w").exists() and not isinstance(result.exception, Tripwire)


def test_validate_gives_the_one_line_error_of_run(tmp_path):
    """``pfd-ase validate`` refuses with the same one line as ``run`` (no traceback)."""
    path = config_file(tmp_path, stage={"timestep_fs": 0.002})
    result = runner.invoke(app, ["validate", str(path)], terminal_width=400)
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert "Traceback" not in result.output
    assert "finetune.stages[0].timestep_fs 0.002 is outside" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("recipe", ["silicon", "carbon", "perovskite", "interface"])
def test_unknown_validation_setting_is_refused_before_any_work(tmp_path, recipe):
    """A recipe's ``validation`` overrides are merged into its preset's; an unknown key (a
    typo) is refused before the run folder is made."""
    import importlib

    run = getattr(importlib.import_module(f"pfd_ase.recipes.{recipe}"), f"run_{recipe}")
    with pytest.raises(ValueError, match=r"validation: unknown setting\(s\) \['test_sets'\]"):
        run(tmp_path / "run", preset="quick", validation={"test_sets": {"n_frames": 1}})
    assert not (tmp_path / "run").exists()
