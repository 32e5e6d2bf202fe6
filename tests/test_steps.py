"""Run state keyed by step inputs, the typed stage configuration and the named steps
(fast: no deepmd-kit training)."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from pfd_ase.workflow import load_config
from pfd_ase.workflow.state import (
    RunState,
    changed_inputs,
    frames_identity,
    inputs_hash,
    run_status,
)


# --------------------------------------------------------------------------- run_step
def test_run_step_reuses_a_record_only_for_the_same_inputs(tmp_path, caplog):
    state = RunState(tmp_path)
    calls = []
    out = tmp_path / "step_out"

    def work(tag):
        def func():
            calls.append(tag)
            out.mkdir(exist_ok=True)
            (out / f"{tag}.txt").write_text(tag)
            return {"tag": tag}

        return func

    first = state.run_step("a", work("1"), inputs={"x": 1, "model": "m1"}, outputs=[out])
    assert first["inputs"] == {"x": 1, "model": "m1"}
    assert first["inputs_hash"] == inputs_hash({"model": "m1", "x": 1})
    again = state.run_step("a", work("2"), inputs={"model": "m1", "x": 1}, outputs=[out])
    assert again == first and calls == ["1"]
    with caplog.at_level(logging.WARNING, logger="pfd_ase.workflow"):
        third = state.run_step("a", work("3"), inputs={"x": 2, "model": "m1"}, outputs=[out])
    assert third["tag"] == "3" and calls == ["1", "3"]
    assert "step a: inputs changed" in caplog.text and "x: 1 -> 2" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["3.txt"]  # old outputs removed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"]["a"]["inputs"] == {"x": 2, "model": "m1"}
    # no inputs: any record is reused, as before
    assert state.run_step("a", work("4"))["tag"] == "3"


def test_an_interrupted_step_with_other_inputs_starts_afresh(tmp_path, caplog):
    state = RunState(tmp_path)
    out = tmp_path / "partial"

    def killed():
        out.mkdir()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        state.run_step("b", killed, inputs={"n": 1}, outputs=[out])
    assert out.exists() and not state.done("b")
    with caplog.at_level(logging.WARNING, logger="pfd_ase.workflow"):
        rec = state.run_step("b", lambda: {"exists": out.exists()}, inputs={"n": 2}, outputs=[out])
    assert rec["exists"] is False and "since it interrupted" in caplog.text
    assert not state.started_path("b").exists()
    # the same inputs resume with the partial outputs
    with pytest.raises(KeyboardInterrupt):
        state.run_step("c", killed, inputs={"n": 1}, outputs=[out])
    rec = state.run_step("c", lambda: {"exists": out.exists()}, inputs={"n": 1}, outputs=[out])
    assert rec["exists"] is True


def test_old_records_without_inputs_are_adopted(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "init.label.json").write_text(json.dumps({"dataset_size": 8}))
    state = RunState(tmp_path)
    rec = state.run_step("init.label", lambda: {"dataset_size": 0}, inputs={"seed": 1})
    assert rec["dataset_size"] == 8 and rec["inputs_adopted"] is True
    rec = state.run_step("init.label", lambda: {"dataset_size": 0}, inputs={"seed": 2})
    assert rec["dataset_size"] == 0


def test_a_moved_run_directory_keeps_records_keyed_by_its_own_paths(tmp_path):
    """Inputs naming files inside the run directory are stored as <run>/...: the run moved
    (or copied) elsewhere reuses its records; a path outside it stays as written."""
    import shutil

    old = tmp_path / "old"
    state = RunState(old)
    calls = []

    def work():
        calls.append(1)
        return {"n": len(calls)}

    inputs = {"params": str(old / "validation" / "phonons" / "DFT"), "other": "/elsewhere/x"}
    rec = state.run_step("validate.phonons_DFT", work, inputs)
    assert rec["inputs"] == {"params": "<run>/validation/phonons/DFT", "other": "/elsewhere/x"}
    shutil.move(old, tmp_path / "new")
    new = RunState(tmp_path / "new")
    moved = {"params": str(tmp_path / "new" / "validation" / "phonons" / "DFT")}
    again = new.run_step("validate.phonons_DFT", work, {**moved, "other": "/elsewhere/x"})
    assert again["n"] == 1 and calls == [1]  # reused, not redone
    assert new.run_step("validate.phonons_DFT", work, {**moved, "other": "/y"})["n"] == 2
    # a record keyed by the absolute spelling (as versions before wrote it) is adopted
    legacy = {"params": str(tmp_path / "new" / "p")}
    record = {"n": 7, "inputs": legacy, "inputs_hash": inputs_hash(legacy)}
    (tmp_path / "new" / "state" / "validate.x.json").write_text(json.dumps(record))
    adopted = new.run_step("validate.x", work, legacy)
    assert adopted["n"] == 7 and adopted["inputs"] == {"params": "<run>/p"}
    assert new.run_step("validate.x", work, legacy)["n"] == 7


def test_changed_inputs_and_run_order(tmp_path):
    assert changed_inputs({"a": {"b": 1, "c": [1]}, "d": 0}, {"a": {"b": 2, "c": [1]}}) == [
        "a.b",
        "d",
    ]
    state = RunState(tmp_path)
    for key in ("init.train", "ft.s1.000.explore", "distill.000.explore", "ft.s1.000.select"):
        state.run_step(key, dict)
    assert run_status(tmp_path)["finished_steps"] == [
        "init.train",
        "ft.s1.000.explore",
        "distill.000.explore",
        "ft.s1.000.select",
    ]


# --------------------------------------------------------------------------- configuration
SI = {"bulk": {"name": "Si", "crystalstructure": "diamond", "a": 5.43, "cubic": True}}


def _config(**overrides):
    config = {
        "structures": {"diamond": SI},
        "labeler": {"name": "tersoff"},
        "base_model": {"path": "chgnet"},
        "progress": False,
    }
    config.update(overrides)
    return config


def test_default_config_text_loads_back_to_the_defaults(tmp_path):
    import yaml

    from pfd_ase.workflow.schema import DEFAULTS, SCHEMA, default_config_text

    text = default_config_text()
    assert yaml.safe_load(text) == DEFAULTS
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert all("  # " in line for line in lines)  # every key has its comment
    for key in ("md_steps:", "tdamp_fs:", "frame_filter:", "max_force_eV_A:", "chunk_size:"):
        assert key in text
    # with structures filled in, the rendered file is a valid configuration
    path = tmp_path / "run.yaml"
    path.write_text(text.replace("structures: {}", f"structures: {{diamond: {SI}}}"))
    config = load_config(path)
    assert config["finetune"] == DEFAULTS["finetune"] and set(config) == set(SCHEMA)


def test_every_explore_task_field_is_set_from_the_stage():
    from dataclasses import fields

    from pfd_ase.explore import ExploreTask
    from pfd_ase.selectors.filters import FrameFilter
    from pfd_ase.workflow.config import distill_config, finetune_stages
    from pfd_ase.workflow.schema import STAGE_SCHEMA

    stage = {
        "name": "hot",
        "temperatures_K": 900,
        "pressures_GPa": [None, 1.0],
        "md_steps": 40,
        "timestep_fs": 1.0,
        "sample_every": 8,
        "thermostat": "nhc",
        "barostat": "berendsen",
        "seed": 17,
        "tdamp_fs": 50.0,
        "pdamp_fs": 500.0,
        "compressibility_per_GPa": 0.02,
        "include_initial": True,
        "check_every": 2,
        "frame_filter": {"distance_factor": 0.6, "safe_distances": {"Si-Si": 1.5}},
    }
    names = {"md_steps" if f.name == "steps" else f.name for f in fields(ExploreTask)}
    assert names <= set(stage) and names <= set(STAGE_SCHEMA)
    config = load_config(_config(finetune={"stages": [stage]}))
    task = finetune_stages(config)[0].explore
    assert task == ExploreTask(
        temperatures_K=[900.0],
        pressures_GPa=[None, 1.0],
        steps=40,
        timestep_fs=1.0,
        sample_every=8,
        thermostat="nose-hoover",
        barostat="berendsen",
        seed=17,
        tdamp_fs=50.0,
        pdamp_fs=500.0,
        compressibility_per_GPa=0.02,
        include_initial=True,
        check_every=2,
        frame_filter=FrameFilter(distance_factor=0.6, safe_distances={"Si-Si": 1.5}),
    )
    # defaults: ExploreTask's own; seeds from the top-level seed as before
    config = load_config(_config(seed=5, finetune={"stages": [{}, {"md_steps": 500}]}))
    first, second = finetune_stages(config)
    assert (first.name, first.explore.seed, second.explore.seed) == ("stage1", 1005, 2005)
    assert first.explore.steps == 2000 and first.explore.frame_filter == FrameFilter()
    assert distill_config(config).explore.seed == 100005


def test_stage_errors_name_the_yaml_key():
    from pfd_ase.workflow import ConfigError

    cases = [
        ({"md_steps": 10, "sample_every": 20}, r"stages\[0\]\.sample_every .* <= md_steps"),
        ({"thermostat": "andersen"}, "unknown thermostat 'andersen'"),
        ({"frame_filter": {"max_length_ratio": 0.5}}, r"frame_filter\.max_length_ratio"),
        ({"frame_filter": {"max_lenght_ratio": 2}}, "did you mean .*max_length_ratio'"),
        ({"tdamp": 10}, "did you mean 'finetune.stages.0.tdamp_fs'"),
        ({"structures": ["nope"]}, r"unknown structures \['nope'\]"),
    ]
    for stage, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(_config(finetune={"stages": [stage]}))
    with pytest.raises(ConfigError, match=r"^distill\.explore\.md_steps must be"):
        load_config(_config(distill={"explore": {"md_steps": 0}}))
    with pytest.raises(ConfigError, match="stage names must differ"):
        load_config(_config(finetune={"stages": [{"name": "a"}, {"name": "a"}]}))


def test_structures_may_be_atoms(tmp_path):
    from ase.build import bulk

    from pfd_ase.data import frame_fingerprint, read_frames
    from pfd_ase.workflow.loops import write_structures

    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.01, seed=1)
    config = load_config(_config(workdir=str(tmp_path / "w"), structures={"si": atoms}))
    assert config["structures"]["si"] is not atoms
    written = write_structures(config, config["workdir"])
    path = tmp_path / "w" / "structures" / "si.extxyz"
    assert written["structures"]["si"] == {"file": str(path)}
    assert frame_fingerprint(read_frames(path)[0]) == frame_fingerprint(atoms)
    mtime = path.stat().st_mtime_ns
    write_structures(config, config["workdir"])
    assert path.stat().st_mtime_ns == mtime  # unchanged: not rewritten
    assert load_config(written)["structures"]["si"] == {"file": str(path)}


# --------------------------------------------------------------------------- steps
def test_force_deviation_committee_and_reference():
    import numpy as np

    from pfd_ase.calculators.deviation import force_deviation

    rng = np.random.default_rng(0)
    forces = rng.normal(size=(3, 5, 3))
    mean = forces.mean(axis=0)
    expected = np.sqrt(np.mean(np.sum((forces - mean) ** 2, axis=2), axis=0))
    np.testing.assert_array_equal(force_deviation(forces), expected)
    student, teacher = forces[0], forces[1]
    np.testing.assert_array_equal(
        force_deviation(student[None], teacher), np.linalg.norm(student - teacher, axis=1)
    )
    with pytest.raises(ValueError, match="shape"):
        force_deviation(forces[0])


def test_select_and_filter_steps():
    import numpy as np
    from ase.build import bulk

    from pfd_ase.workflow import steps
    from pfd_ase.workflow.config import distill_config, finetune_stages

    config = load_config(
        _config(
            finetune={"stages": [{"n_select": 2, "chunk_size": 1}]},
            distill={"n_frames": 2, "force_devi_threshold_eV_A": 0.1},
        )
    )
    stage, ds = finetune_stages(config)[0], distill_config(config)
    frames = []
    for k in range(5):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True)
        atoms.rattle(0.02 * (k + 1), seed=k)
        atoms.info["pfd_structure_index"] = 0
        frames.append(atoms)
    picked = steps.select(frames, stage, reference=frames[:1])
    assert len(picked) == 2 and 0 not in picked
    assert steps.select(frames, ds) == [0, 4]  # evenly spaced
    assert steps.select(frames, ds, deviations=[0.05, 0.3, 0.2, 0.5, 0.01]) == [1, 3]
    assert steps.select(frames, ds, deviations=[0.0] * 5) == []
    squeezed = frames[0].copy()
    squeezed.positions[1] = squeezed.positions[0] + [0.3, 0, 0]
    result = steps.filter([*frames, squeezed], stage, [frames[0]])
    assert result.kept_indices == [0, 1, 2, 3, 4] and result.counts["too_close"] == 1
    assert len(np.unique([frames_identity([f]) for f in frames])) == 5


def test_evaluate_step_against_labels_and_a_reference_model():
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from pfd_ase.training.evaluate import evaluate as model_errors
    from pfd_ase.workflow import steps

    frames = []
    for k in range(3):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=k)
        frames.append(atoms)
    assert steps.evaluate(EMT(), []).force_rmse_eV_A is None

    class Shifted(EMT):
        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            self.results["forces"] = self.results["forces"] + 0.1

    test = steps.evaluate(Shifted(), frames, reference=EMT())
    assert test.n_frames == 3
    assert test.force_rmse_eV_A == pytest.approx(0.1)
    assert test.max_force_devi_eV_A == pytest.approx([0.1 * np.sqrt(3)] * 3)
    labelled = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        atoms.calc = SinglePointCalculator(atoms, **results)
        labelled.append(atoms)
    direct = steps.evaluate(Shifted(), labelled)
    assert direct.force_rmse_eV_A == model_errors(Shifted(), labelled)["force_rmse"]


def _sevennet_teacher(**settings):
    """The TrainConfig of a teacher fine-tuning SevenNet-0 for 3 epochs, with ``settings``."""
    from pfd_ase.workflow.config import TrainConfig

    return TrainConfig(
        role="teacher",
        steps=10,
        learning_rate=None,
        seed=0,
        type_map=None,
        base_model="7net-0",
        head=None,
        chgnet_epochs=3,
        compress=False,
        **settings,
    )


@pytest.mark.parametrize(("weight", "passed"), [(None, {}), (0, {"stress_weight": 0.0})])
def test_stress_weight_reaches_the_universal_model_fine_tuning(
    tmp_path, monkeypatch, weight, passed
):
    """finetune.stress_weight is handed to SevenNet's fine-tuning only when set."""
    import pfd_ase.training.sevennet as sevennet
    from pfd_ase.workflow.steps import train

    seen = {}

    def fake(frames, folder, **kwargs):
        seen.update(kwargs)
        return str(tmp_path / "model.pth")

    monkeypatch.setattr(sevennet, "finetune_sevennet", fake)
    config = _sevennet_teacher(stress_weight=weight)
    train(config, [], tmp_path)
    assert seen["epochs"] == 3
    assert {k: v for k, v in seen.items() if k == "stress_weight"} == passed


def test_structure_weights_repeat_the_frames_of_those_structures(tmp_path, monkeypatch):
    """Each frame of a weighted structure enters a training ``weight`` times, in place;
    frames of other structures, or of none, once. The teacher's and the student's
    trainings get the weights and apply them after their validation split."""
    from ase.build import bulk

    import pfd_ase.training.sevennet as sevennet
    import pfd_ase.training.stages as stages
    from pfd_ase.data import weighted
    from pfd_ase.workflow.config import InitConfig
    from pfd_ase.workflow.steps import perturb, train

    structures = {"diamond": bulk("Si", "diamond", a=5.43), "fcc": bulk("Si", "fcc", a=3.9)}
    frames = perturb(InitConfig(None, 2, 0.01, 0.01), structures, seed=0)
    assert [a.info["pfd_structure"] for a in frames] == ["diamond"] * 2 + ["fcc"] * 2
    frames.append(bulk("Si", "bcc", a=3.1))  # a frame from elsewhere: no structure name
    ids = [a.info.get("pfd_frame_id") for a in weighted(frames, {"fcc": 3})]
    assert ids == ["init.diamond.000", "init.diamond.001"] + ["init.fcc.000"] * 3 + [
        "init.fcc.001"
    ] * 3 + [None]
    assert weighted(frames, None) == frames
    seen = {}
    monkeypatch.setattr(
        sevennet, "finetune_sevennet", lambda frames, folder, **kw: seen.update(kw) or "m"
    )
    config = _sevennet_teacher(structure_weights={"fcc": 3})
    train(config, frames, tmp_path)
    assert seen["structure_weights"] == {"fcc": 3}
    seen.clear()
    train(_sevennet_teacher(), frames, tmp_path)
    assert seen["structure_weights"] is None  # unset: every frame once
    monkeypatch.setattr(stages, "train_student", lambda frames, folder, **kw: seen.update(kw))
    student = dataclasses.replace(config, role="student", base_model=None)
    with pytest.raises(AttributeError):  # the fake returns no TrainResult
        train(student, frames, tmp_path)
    assert seen["structure_weights"] == {"fcc": 3}
    with pytest.raises(ValueError, match="structure_weights: fcc must be a positive integer"):
        dataclasses.replace(config, structure_weights={"fcc": 0})


def test_weighted_copies_stay_out_of_the_validation_split(tmp_path):
    """deepmd-kit's trainings split first, then repeat: a validation frame has no copy among
    the training frames, and a weighted training frame is there ``weight`` times."""
    import numpy as np

    from pfd_ase.training.stages import _systems

    from conftest import si_frames

    frames = si_frames(20, seed=3, displacement=0.05)
    for k, atoms in enumerate(frames):
        atoms.info["pfd_structure"] = "diamond" if k % 2 else "other"
    train, valid = _systems(
        frames, None, tmp_path, ["Si"], seed=0, structure_weights={"diamond": 2}
    )
    train_e = np.concatenate([np.load(p / "set.000" / "energy.npy") for p in train])
    valid_e = np.concatenate([np.load(p / "set.000" / "energy.npy") for p in valid])
    assert len(valid_e) == 2 and not set(valid_e) & set(train_e)
    energies = {a.get_potential_energy(): a.info["pfd_structure"] for a in frames}
    counts = {e: list(train_e).count(e) for e in set(train_e)}
    assert all(n == (2 if energies[e] == "diamond" else 1) for e, n in counts.items())
    assert len(train_e) == 18 + sum(energies[e] == "diamond" for e in counts)


@pytest.mark.parametrize("backend", ["sevennet", "chgnet"])
def test_universal_fine_tunings_repeat_only_their_training_frames(tmp_path, monkeypatch, backend):
    """SevenNet's and CHGNet's fine-tunings split off their validation frames first and
    repeat the weighted structures' training frames only."""
    import importlib

    pytest.importorskip("sevenn" if backend == "sevennet" else "chgnet")
    module = importlib.import_module(f"pfd_ase.training.{backend}")

    from conftest import si_frames

    frames = si_frames(50, seed=3, displacement=0.05)  # 5 held out: the minimum
    for k, atoms in enumerate(frames):
        atoms.info["pfd_structure"] = "diamond" if k % 2 else "other"
    seen = []
    monkeypatch.setattr(
        module, "_run", lambda settings, record, resume, parts, *a: seen.extend(parts)
    )
    getattr(module, f"finetune_{backend}")(
        frames, tmp_path, epochs=1, progress=False, structure_weights={"diamond": 2}
    )
    train, valid = seen
    assert len(valid) == 5 and not {id(a) for a in valid} & {id(a) for a in train}
    kept = [a for a in frames if all(a is not v for v in valid)]
    assert [id(a) for a in train] == [
        id(a) for a in kept for _ in range(2 if a.info["pfd_structure"] == "diamond" else 1)
    ]
