"""End-to-end PFD loops on silicon: tiny deepmd-kit base model, Tersoff as the 'DFT'."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes

from pfd_ase.data import read_frames
from pfd_ase.workflow import ConfigError, load_config, run, run_status

from conftest import TINY_PRETRAIN_LR, requires_deepmd, si_frames

pytestmark = requires_deepmd

MD = {"md_steps": 20, "sample_every": 5, "timestep_fs": 2.0, "temperatures_K": [800.0]}


def si_config(workdir, base, **overrides):
    config = {
        "workdir": str(workdir),
        "seed": 3,
        "structures": {
            "diamond": {
                "bulk": {"name": "Si", "crystalstructure": "diamond", "a": 5.43, "cubic": True}
            },
        },
        "labeler": {"name": "tersoff"},
        "base_model": {"path": str(base), "head": "sw"},
        "init": {"n_perturb": 4},
        "finetune": {
            "steps": 20,
            "learning_rate": {"type": "exp", "start_lr": 2e-3, "stop_lr": 1e-4, "decay_steps": 1},
            "force_rmse_threshold_eV_A": 0.001,
            "stages": [
                {
                    "name": "s1",
                    **MD,
                    "pressures_GPa": [None, 1.0],
                    "max_iterations": 1,
                    "n_select": 3,
                    "chunk_size": 2,
                },
            ],
        },
        "distill": {
            "steps": 20,
            "learning_rate": {"type": "exp", "start_lr": 1e-2, "stop_lr": 1e-8, "decay_steps": 1},
            "max_iterations": 2,
            "n_frames": 4,
            "force_devi_threshold_eV_A": 0.0,
            "target_force_rmse_eV_A": 0.001,
            "min_improvement": 0.0,
            "compress": False,  # compression is tested in test_training.py
            "explore": {**MD, "min_atoms": 16},
        },
        "progress": False,
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A tiny two-head pre-trained model (SW silicon, EMT copper)."""
    from pfd_ase.training.stages import pretrain

    from conftest import emt_frames

    work = tmp_path_factory.mktemp("base")
    return pretrain(
        {"sw": si_frames(6, seed=11), "emt": emt_frames(4, seed=12)},
        work,
        steps=20,
        learning_rate=TINY_PRETRAIN_LR,
        batch_size="auto",
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, base_model):
    work = tmp_path_factory.mktemp("run")
    summary = run(si_config(work, base_model.checkpoint))
    return work, summary


def test_end_to_end_finetune_and_distill(finished_run):
    work, summary = finished_run
    assert summary["finished"]
    steps = summary["steps"]
    assert steps["init.label"]["n_labelled"] == 4
    # one fine-tune iteration selecting 3 frames out of the MD candidates
    sel = steps["ft.s1.000.select"]
    assert sel["n_candidates"] == 2 * 20 // 5  # 2 walkers (NVT + NPT), 4 samples each
    assert sel["n_selected"] == 3
    assert steps["ft.s1.000.label"]["model_force_rmse_eV_A"] > 0
    assert steps["ft.s1.000.label"]["dataset_entropy"] > 0
    assert "ft.s1.000.train" in steps
    data = read_frames(work / "data" / "labelled.extxyz")
    assert len(data) == 4 + 3
    assert {a.info["pfd_labeler"] for a in data} == {"tersoff"}
    ids = [a.info["pfd_frame_id"] for a in data]
    assert len(set(ids)) == len(ids)
    # perturbed (init) and explored (s1) frames alike know the structure they came from
    assert [a.info["pfd_structure"] for a in data] == ["diamond"] * 7
    # distillation: the student was trained on teacher labels and compared to the teacher
    assert steps["distill.000.explore"]["n_new"] == 4
    assert steps["distill.001.explore"]["student_vs_teacher_force_rmse_eV_A"] > 0
    # the teacher explored the 8-atom diamond cell repeated to 16 atoms (min_atoms)
    student_set = read_frames(work / "distill" / "teacher_labelled.extxyz")
    assert {len(a) for a in student_set} == {16} and {len(a) for a in data} == {8}
    assert {a.info["pfd_structure"] for a in student_set} == {"diamond"}  # for its weights
    assert Path(summary["student"]).exists() and Path(summary["teacher"]).exists()
    assert summary["validation"]["student_force_rmse_eV_A"] > 0
    status = run_status(work)
    assert status["finished"] and status["n_labelled"] == 7
    assert json.loads((work / "summary.json").read_text())["versions"]["deepmd-kit"] == "3.2.0"


def test_rerun_of_a_finished_run_does_nothing(finished_run, base_model):
    work, summary = finished_run
    mtimes = {p: p.stat().st_mtime for p in (work / "state").glob("*.json")}
    again = run(si_config(work, base_model.checkpoint))
    assert {p: p.stat().st_mtime for p in (work / "state").glob("*.json")} == mtimes
    assert again["steps"].keys() == summary["steps"].keys()


def _rerun_changed(work, base_model, tmp_path, caplog, change):
    """Rerun a copy of the finished run with ``change(config)`` applied; return the copy,
    the summary and the steps logged as redone ("inputs changed")."""
    import logging
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(work, copy)
    config = si_config(copy, base_model.checkpoint)
    change(config)
    with caplog.at_level(logging.WARNING, logger="pfd_ase.workflow"):
        again = run(config)
    messages = [r.getMessage() for r in caplog.records if "inputs changed" in r.getMessage()]
    return copy, again, {m.split()[1].rstrip(":") for m in messages}


def test_rerun_with_changed_settings_redoes_the_dependent_steps(
    finished_run, base_model, tmp_path, caplog
):
    work, summary = finished_run

    def change(config):
        config["finetune"]["stages"][0]["n_select"] = 2
        config["distill"]["enabled"] = False

    copy, again, redone = _rerun_changed(work, base_model, tmp_path, caplog, change)
    assert redone == {"ft.s1.000.select", "ft.s1.000.label", "ft.s1.000.train", "validation"}
    assert "n_select: 3 -> 2" in caplog.text
    steps = again["steps"]
    for key in ("init.label", "init.train", "ft.s1.000.md"):  # reused as they were
        assert steps[key]["inputs_hash"] == summary["steps"][key]["inputs_hash"]
        assert steps[key]["finished_at"] == summary["steps"][key]["finished_at"]
    assert steps["ft.s1.000.select"]["n_selected"] == 2
    assert steps["ft.s1.000.select"]["inputs"]["n_select"] == 2
    assert list(steps) == [
        "init.label",
        "init.train",
        "ft.s1.000.md",
        "ft.s1.000.select",
        "ft.s1.000.label",
        "ft.s1.000.train",
        "validation",
    ]
    data = read_frames(copy / "data" / "labelled.extxyz")
    assert len(data) == 4 + 2  # the frames of the old selection left the dataset
    assert run_status(copy)["finished_steps"][: len(steps)] == list(steps)


def test_student_driven_distillation_explores_with_the_current_student(
    finished_run, base_model, tmp_path, caplog
):
    """``distill.explore.driver: student``: iteration 1 runs the first student's MD (the
    teacher's before); with ``init_from_previous`` its student starts from the first one's
    checkpoint. Only iteration 1 and what depends on it are redone."""
    from pfd_ase.workflow.state import model_identity

    work, summary = finished_run

    def change(config):
        config["distill"]["explore"]["driver"] = "student"
        config["distill"]["init_from_previous"] = True

    copy, again, redone = _rerun_changed(work, base_model, tmp_path, caplog, change)
    config = si_config(copy, base_model.checkpoint)
    change(config)
    assert redone == {"distill.001.md", "distill.001.explore", "distill.001.train", "validation"}
    steps, before = again["steps"], summary["steps"]
    first_student = model_identity(copy / "distill" / "iter.000" / "train" / "model.pth")
    assert steps["distill.000.md"]["inputs"]["model"] == before["distill.000.md"]["inputs"]["model"]
    assert steps["distill.001.md"]["inputs"]["model"] == first_student
    assert before["distill.001.md"]["inputs"]["model"] != first_student  # the teacher's
    assert steps["distill.001.explore"]["student_vs_teacher_force_rmse_eV_A"] > 0
    checkpoint = steps["distill.000.train"]["checkpoint"]
    assert steps["distill.001.train"]["inputs"]["training"]["init_model"] == model_identity(
        checkpoint
    )
    assert "init_model" not in steps["distill.000.train"]["inputs"]["training"]
    command = json.loads((copy / "distill/iter.001/train/train/pfd_train.json").read_text())
    assert command["command"][-2:] == ["--init-model", str(Path(checkpoint).resolve())]
    with pytest.raises(ConfigError, match=r"distill\.explore\.driver must be one of"):
        config["distill"]["explore"]["driver"] = "students"
        run(config)


def test_perturbed_copies_join_the_students_data_labelled_by_the_teacher(
    finished_run, base_model, tmp_path, caplog
):
    """``distill.perturb``: strained, displaced copies of the distillation's 16-atom cells,
    labelled by the teacher before the first training; the distillation is redone from the
    first comparison on (one iteration here, for speed), the fine-tuning is not."""
    from pfd_ase.calculators import PFDCalculator

    work, summary = finished_run

    def change(config):
        config["distill"]["perturb"] = {"n_perturb": 2, "cell_strain": 0.03}
        config["distill"]["max_iterations"] = 1

    copy, again, redone = _rerun_changed(work, base_model, tmp_path, caplog, change)
    assert redone == {"distill.000.explore", "distill.000.train", "validation"}
    steps = again["steps"]
    assert (
        steps["distill.000.md"]["finished_at"] == summary["steps"]["distill.000.md"]["finished_at"]
    )
    assert steps["distill.perturb"]["n_new"] == 2 and steps["distill.perturb"]["n_failed"] == 0
    assert steps["distill.perturb"]["inputs"]["seed"] == 3 + 200000
    student_set = read_frames(copy / "distill" / "teacher_labelled.extxyz")
    copies = [a for a in student_set if a.info["pfd_frame_id"].startswith("distill.perturb.")]
    assert [a.info["pfd_frame_id"] for a in copies] == [
        "distill.perturb.diamond.000",
        "distill.perturb.diamond.001",
    ]
    assert len(student_set) == len(copies) + 4
    assert steps["distill.000.explore"]["train_size"] == len(student_set)
    teacher = PFDCalculator(model=again["teacher"])
    cubic = 2 * 5.43**3
    for frame in copies:
        assert len(frame) == 16
        strain = frame.cell.volume / cubic - 1
        assert 0 < abs(strain) < 0.1  # strained, within 3 % a side
        bare = frame.copy()
        bare.calc = teacher
        np.testing.assert_allclose(frame.get_forces(), bare.get_forces(), atol=1e-5)
        assert frame.get_potential_energy() == pytest.approx(bare.get_potential_energy(), abs=1e-5)
    with pytest.raises(ConfigError, match=r"distill\.perturb\.n_perturb must be an integer >= 0"):
        config = si_config(tmp_path / "bad", base_model.checkpoint)
        config["distill"]["perturb"] = {"n_perturb": -1}
        run(config)


class FlakyTersoff(Calculator):
    """Tersoff, but raises for every third call (a 'failed DFT' job)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        from pfd_ase.calculators.labelers import make_labeler

        self.inner = make_labeler("tersoff")
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        if self.calls % 3 == 0:
            raise RuntimeError("SCF did not converge (simulated)")
        self.inner.calculate(self.atoms, properties, system_changes)
        self.results = dict(self.inner.results)
        self.results.setdefault("free_energy", self.results["energy"])


def test_failed_labelling_is_recorded_and_skipped(tmp_path, base_model):
    from pfd_ase.workflow.loops import initial_data
    from pfd_ase.workflow.state import RunState

    config = load_config(si_config(tmp_path, base_model.checkpoint, labeler=FlakyTersoff()))
    state = RunState(tmp_path, config)
    init = state.run_step("init.label", lambda: initial_data(config, state))
    assert init["n_failed"] == 1 and init["n_labelled"] == 3
    assert "SCF did not converge" in init["failures"][0]["message"]
    assert (Path(init["failures"][0]["task_dir"]) / "failure.json").exists()
    assert len(state.dataset()) == 3
    assert json.loads((tmp_path / "summary.json").read_text())["steps"]["init.label"] == init


def test_config_errors_before_any_work(tmp_path, base_model):
    good = si_config(tmp_path / "w", base_model.checkpoint)
    cases = [
        ({"temperature": 300}, "unknown key 'temperature'"),
        ({"labeler": {"name": "nonsense"}}, "labeler"),
        ({"base_model": {"path": str(base_model.checkpoint), "head": "xx"}}, "heads"),
        (
            {"structures": {"x": {"bulk": {"name": "Au", "crystalstructure": "fcc", "a": 4.08}}}},
            r"\['Au'\] are not in the base model's type map",
        ),
        ({"init": {"n_perturb": 0}}, "init.n_perturb"),
        ({"labeler": {"name": "vasp"}}, "labeler"),
    ]
    for change, message in cases:
        config = {**good, **change}
        with pytest.raises(ConfigError, match=message):
            load_config(config)
    stage = dict(good["finetune"]["stages"][0], timestep=2.0)
    with pytest.raises(ConfigError, match="did you mean 'finetune.stages.0.timestep_fs'"):
        load_config({**good, "finetune": {**good["finetune"], "stages": [stage]}})
    bad_units = dict(good["finetune"]["stages"][0], temperatures_K=[-5.0])
    with pytest.raises(ConfigError, match="temperatures_K"):
        load_config({**good, "finetune": {**good["finetune"], "stages": [bad_units]}})
    assert not (tmp_path / "w").exists()


def test_yaml_config_file(tmp_path, base_model):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(si_config(tmp_path / "w", base_model.checkpoint)))
    config = load_config(path)
    assert config["finetune"]["stages"][0]["thermostat"] == "langevin"  # default merged in
    path.write_text("labeler: [unclosed")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(path)


# --------------------------------------------------------------------------- resume
class KillingTersoff(FlakyTersoff):
    """Tersoff that SIGKILLs its own process at the N-th calculation of a run
    (``PFD_TEST_KILL_AT``) and logs every finished calculation to ``PFD_TEST_LOG``."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        self.calls += 1
        if self.calls == int(os.environ.get("PFD_TEST_KILL_AT", "0")):
            os.kill(os.getpid(), signal.SIGKILL)
        self.inner.calculate(self.atoms, properties, system_changes)
        self.results = dict(self.inner.results)
        self.results.setdefault("free_energy", self.results["energy"])
        with open(os.environ["PFD_TEST_LOG"], "a") as fh:
            fh.write(f"{self.atoms.positions.sum():.12f}\n")


DRIVER = """
import json, sys
sys.path.insert(0, {tests!r})
from test_workflow import KillingTersoff, si_config
from pfd_ase.workflow import run
config = si_config({work!r}, {base!r}, labeler=KillingTersoff())
config["distill"]["enabled"] = False
run(config)
"""


def _drive(work, base, kill_at, log):
    script = DRIVER.format(tests=str(Path(__file__).parent), work=str(work), base=str(base))
    env = dict(os.environ, PFD_TEST_KILL_AT=str(kill_at), PFD_TEST_LOG=str(log))
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)


def test_resume_after_sigkill_gives_the_uninterrupted_dataset(tmp_path, base_model, finished_run):
    # the reference: the same settings run uninterrupted (finished_run; its distillation
    # writes no DFT-labelled frame); killed during the initial labelling (3rd frame), then
    # during the fine-tune labelling
    log = tmp_path / "killed.log"
    for kill_at in (3, 2):
        proc = _drive(tmp_path / "killed", base_model.checkpoint, kill_at, log)
        assert proc.returncode == -signal.SIGKILL
    done = _drive(tmp_path / "killed", base_model.checkpoint, 0, log)
    assert done.returncode == 0, done.stderr[-2000:]
    ref = read_frames(finished_run[0] / "data" / "labelled.extxyz")
    got = read_frames(tmp_path / "killed" / "data" / "labelled.extxyz")
    assert [a.info["pfd_frame_id"] for a in got] == [a.info["pfd_frame_id"] for a in ref]
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(b.positions, a.positions, atol=1e-8)
        assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), abs=1e-8)
    # no finished calculation was ever repeated
    finished = log.read_text().split()
    assert len(finished) == len(set(finished)) == len(got)


def test_exploration_and_labelling_through_dask(tmp_path):
    pytest.importorskip("dask.distributed")
    from ase.build import bulk

    from pfd_ase.explore import explore
    from pfd_ase.label import label_frames
    from pfd_ase.parallel import make_executor

    start = [bulk("Si", "diamond", a=5.43, cubic=True)]
    settings = {"temperatures_K": [300.0, 900.0], "steps": 10, "sample_every": 5, "seed": 1}
    serial = explore(start, "sw", tmp_path / "serial", progress=False, **settings)
    with make_executor({"kind": "dask", "max_workers": 2}) as executor:
        parallel = explore(
            start, "sw", tmp_path / "dask", executor=executor, progress=False, **settings
        )
        labelled = label_frames(parallel.frames, "tersoff", tmp_path / "label", executor)
    assert len(parallel.frames) == len(serial.frames) == 4
    for a, b in zip(serial.frames, parallel.frames, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
    direct = label_frames(serial.frames, "tersoff", tmp_path / "label_serial")
    for a, b in zip(direct.frames, labelled.frames, strict=True):
        assert a.get_potential_energy() == b.get_potential_energy()


def test_finished_steps_return_to_a_lost_summary(tmp_path):
    from pfd_ase.workflow.state import RunState

    calls = []
    state = RunState(tmp_path)
    state.run_step("init.label", lambda: calls.append(1) or {"dataset_size": 8})
    (tmp_path / "summary.json").unlink()
    again = RunState(tmp_path)
    record = again.run_step("init.label", lambda: calls.append(1) or {"dataset_size": 0})
    assert record["dataset_size"] == 8 and len(calls) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"]["init.label"]["dataset_size"] == 8


def test_dh_watch_makes_only_extrapolating_frames_candidates(tmp_path, base_model):
    """With a stage's dh_watch, candidates are the frames beyond max_dH against the dataset;
    an iteration whose MD never leaves the dataset's domain ends the stage."""
    stage = {
        "name": "s1",
        **MD,
        "max_iterations": 2,
        "n_select": 2,
        "dh_watch": {"max_dH": 1e6},  # nothing is that far: the stage converges at once
    }
    finetune = {"steps": 5, "force_rmse_threshold_eV_A": 0.001, "stages": [stage]}
    config = si_config(tmp_path / "far", base_model.checkpoint, finetune=finetune)
    config["distill"] = {"enabled": False}
    summary = run(config)
    md = summary["steps"]["ft.s1.000.md"]
    assert md["n_explored"] > 0 and md["n_over_max_dH"] == 0 and md["n_candidates"] == 0
    assert summary["converged.s1"] == 0
    assert "ft.s1.000.select" not in summary["steps"]
    assert "ft.s1.001.md" not in summary["steps"]

    # the same run folder (initial data and model reused), a threshold every MD state
    # exceeds: the walker stops at its first check; the label step's test ends the stage
    stage["dh_watch"] = {"max_dH": 1e-9, "action": "stop", "every": 1}
    finetune["force_rmse_threshold_eV_A"] = 100.0
    config = si_config(tmp_path / "far", base_model.checkpoint, finetune=finetune)
    config["distill"] = {"enabled": False}
    again = run(config)
    assert again["steps"]["init.train"] == summary["steps"]["init.train"]
    md = again["steps"]["ft.s1.000.md"]
    assert md["walkers_stopped_by_dH"] == 1  # one walker: diamond at 800 K, NVT
    assert md["n_over_max_dH"] == md["n_candidates"] >= 1
    folder = tmp_path / "far" / "finetune" / "s1" / "iter.000"
    assert len(read_frames(folder / "candidates.extxyz")) == md["n_candidates"]
    assert again["steps"]["ft.s1.000.select"]["n_selected"] >= 1
    assert "ft.s1.000.train" not in again["steps"]


def test_dh_watch_settings_are_checked(tmp_path, base_model):
    good = si_config(tmp_path / "w", base_model.checkpoint)
    for watch, message in (
        ({"max_dH": -1.0}, "dh_watch.max_dH must be a finite positive number"),
        ({"max_dH": 2.0, "action": "explode"}, "dh_watch.action must be one of mark, stop"),
        ({"action": "stop"}, "need dh_watch.max_dH"),
        ({"max_dH": 2.0, "every": 0}, "dh_watch.every must be a positive integer"),
    ):
        stage = dict(good["finetune"]["stages"][0], dh_watch=watch)
        with pytest.raises(ConfigError, match=message):
            load_config({**good, "finetune": {**good["finetune"], "stages": [stage]}})


def test_teacher_labels_of_an_older_version_are_redone_not_fatal(tmp_path, tiny_models):
    """Teacher labels made under the calculator-object key (before the ("pfd", ...) spec)
    make the step label again, the old folder kept aside, instead of stopping the run."""
    from dataclasses import replace

    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.data import write_frames
    from pfd_ase.label import label_frames
    from pfd_ase.workflow.config import distill_config
    from pfd_ase.workflow.loops import CANDIDATES_FILE, _compare_select_label

    from conftest import emt_frames

    teacher = str(tiny_models[1]["pth"])
    candidates = emt_frames(2, seed=4)
    for atoms in candidates:
        atoms.calc = None
    write_frames(tmp_path / CANDIDATES_FILE, candidates)
    old = [a.copy() for a in candidates]
    for j, atoms in enumerate(old):
        atoms.info["pfd_frame_id"] = f"d.{j:03d}"
    label_frames(old, PFDCalculator(teacher), tmp_path / "label")  # the older key
    cu = {"fcc": {"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.62, "cubic": True}}}
    config = si_config(
        tmp_path / "run", teacher, base_model={"path": teacher}, structures=cu, labeler="emt"
    )
    ds = replace(distill_config(load_config(config)), n_frames=2)
    record = _compare_select_label(ds, tmp_path, "d", teacher, None, [])
    assert record["n_new"] == 2 and record["n_failed"] == 0
    assert (tmp_path / "label.replaced").is_dir()
    frames = read_frames(tmp_path / "label" / "labelled.extxyz")
    assert [f.info["pfd_labeler"] for f in frames] == ["pfd", "pfd"]
