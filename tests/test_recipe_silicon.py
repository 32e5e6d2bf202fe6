"""The silicon recipe in its fastest form: tiny deepmd-kit base model, Stillinger-Weber as DFT."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import requires_deepmd


def test_help():
    out = subprocess.run(
        [sys.executable, "-m", "pfd_ase.recipes.silicon", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--quick" in out.stdout and "--labeler" in out.stdout and "--base-model" in out.stdout


def test_config_follows_table_s1(tmp_path):
    from pfd_ase.recipes.silicon import silicon_config
    from pfd_ase.workflow import load_config

    config = silicon_config(tmp_path, preset="production", labeler="sw", base_model="chgnet")
    stages = config["finetune"]["stages"]
    assert [s["structures"] for s in stages] == [
        ["diamond", "hex_diamond"],
        ["fcc", "bcc", "hcp", "beta_sn"],
        ["diamond_vacancy"],
    ]
    for stage in stages:
        assert stage["temperatures_K"] == [500.0] and stage["pressures_GPa"] == [0.001, 1.0]
        assert (stage["md_steps"], stage["timestep_fs"], stage["sample_every"]) == (2000, 2.0, 100)
    assert set(config["structures"]) >= {
        "diamond",
        "hex_diamond",
        "fcc",
        "bcc",
        "hcp",
        "beta_sn",
        "bc8",
        "diamond_vacancy",
    }
    load_config(config)  # valid as written


def test_default_student_explores_nvt_and_1_gpa(tmp_path):
    """The default preset's teacher MD for the student: NVT walkers at each cell and NPT at
    1 GPa; quick and production keep the stages' 0.001 / 1 GPa."""
    from pfd_ase.recipes.silicon import silicon_config
    from pfd_ase.workflow import load_config
    from pfd_ase.workflow.config import distill_config

    pressures = {}
    for preset in ("quick", "default", "production"):
        config = silicon_config(tmp_path / preset, preset=preset, labeler="sw")
        pressures[preset] = config["distill"]["explore"]["pressures_GPa"]
        if preset == "default":
            explore = distill_config(load_config(config)).explore
    assert pressures == {"quick": [0.001, 1.0], "default": [None, 1.0], "production": [0.001, 1.0]}
    assert explore.ensemble(None).startswith("nvt") and explore.ensemble(1.0).startswith("npt")


def test_only_the_default_student_learns_perturbed_copies(tmp_path):
    """The default preset's student data has teacher-labelled perturbed copies (10 of each
    structure, 3 % strain, 0.05 Å); quick and production have none."""
    from pfd_ase.recipes.silicon import silicon_config
    from pfd_ase.workflow import load_config
    from pfd_ase.workflow.config import distill_config

    perturb = {}
    for preset in ("quick", "default", "production"):
        config = silicon_config(tmp_path / preset, preset=preset, labeler="sw")
        perturb[preset] = distill_config(load_config(config)).perturb
    assert perturb["quick"] is None and perturb["production"] is None
    default = perturb["default"]
    assert (default.n_perturb, default.cell_strain, default.displacement_A) == (10, 0.03, 0.05)


REPORT_FILES = (
    "summary.json",
    "report.md",
    "phonons.png",
    "vacancies.png",
    "parity_teacher_vs_dft.png",
    "parity_student_vs_dft.png",
    "parity_test_base.png",
    "parity_test_PF.png",
    "parity_test_PFD.png",
)


def _quick_sw_run(
    tmp_path, base_steps: int, finetune_steps: int, student_steps: int, n_test: int = 2
) -> dict:
    """The quick preset with SW as DFT, a tiny DPA-2 base pre-trained on SW diamond Si for
    ``base_steps``, the diamond-family stages of Table S1 (SW's FCC/BCC/HCP/β-Sn are unstable
    and a model this small cannot learn them in a few hundred steps), a student distilled on
    diamond, ``n_test`` held-out frames per structure (the preset's 2 unless overridden
    through ``validation``). Returns run_silicon's result after checking what holds for any
    model: the report, the held-out set, phonopy's files, the acoustic sum rule and SW's own
    figures."""
    from pfd_ase.recipes.silicon import run_silicon, silicon_config
    from pfd_ase.training.stages import pretrain

    from conftest import si_frames

    lr = {"type": "exp", "start_lr": 5e-3, "stop_lr": 1e-5, "decay_steps": 100}
    base = pretrain(
        {"sw": si_frames(24, seed=21, displacement=0.05)},
        tmp_path / "base",
        steps=base_steps,
        learning_rate=lr,
        batch_size="auto",  # not the DPA-2 paper's 8 frames: speed
        progress=False,
    )
    diamond_like = ["diamond", "hex_diamond", "diamond_vacancy"]
    stages = silicon_config(tmp_path / "config", preset="quick")["finetune"]["stages"]
    result = run_silicon(
        tmp_path / "run",
        preset="quick",
        labeler="sw",
        base_model=str(base.checkpoint),
        head="sw",
        validation=None if n_test == 2 else {"test_set": {"n_frames": n_test}},
        overrides={
            "init": {"structures": diamond_like},
            "finetune": {
                "steps": finetune_steps,
                "learning_rate": lr,
                "stages": [s for s in stages if set(s["structures"]) <= set(diamond_like)],
            },
            # the student learns from teacher MD of diamond, the phase it is validated on
            "distill": {
                "steps": student_steps,
                "max_iterations": 1,
                "explore": {"structures": ["diamond"]},
            },
            "progress": False,
        },
    )
    report = tmp_path / "run" / "report"
    for name in REPORT_FILES:
        assert (report / name).stat().st_size > 0, name
    # the held-out test set: n_test frames of each of the 8 structures, labelled by SW
    held = result["held_out"]
    print(json.dumps(held, indent=1))
    assert held["PF"]["n_frames"] == held["PFD"]["n_frames"] == 8 * n_test
    assert result["test_set"]["failures"] == []
    dft = result["phonons"]["DFT"]["special_points"]["Gamma"]
    assert max(dft) == pytest.approx(17.83, abs=0.1)  # SW Γ optical (phonopy, 3x3x3)
    for name in ("DFT", "PF", "PFD"):  # three acoustic zeros at Γ whatever the model
        gamma = result["phonons"][name]["special_points"]["Gamma"]
        assert np.all(np.abs(np.sort(gamma)[:3]) < 0.05), name
        # phonopy's own file, for its DOS/thermal tools
        assert (tmp_path / "run" / "validation" / "phonons" / name / "phonopy_params.yaml").exists()
    pfd = result["phonons"]["PFD"]["special_points"]["Gamma"]
    assert set(result["phonon_max_dev_THz"]) == {"PF", "PFD"}  # every branch at Γ/X/L
    assert result["phonon_max_dev_THz"]["PFD"] >= abs(max(pfd) - max(dft))
    # SW's diamond vacancy: between its fully relaxed (2.82 eV) and unrelaxed (4.63 eV) values
    assert 2.8 < result["vacancy_formation_eV"]["DFT"]["diamond"] < 4.7
    # SW's own FCC is not mechanically stable: reported as such, not as a number
    assert result["vacancy_formation_eV"]["DFT"]["fcc"] is None
    assert "unstable" in result["vacancy_flags"]["DFT"]["fcc"]
    return result


@requires_deepmd
def test_quick_recipe_runs_every_step_and_reports(tmp_path):
    """The whole recipe in ~2 minutes: models trained a few dozen steps, so only what holds
    for any model is checked (the accuracy is test_quick_recipe_with_classical_labeler's)."""
    result = _quick_sw_run(tmp_path, base_steps=30, finetune_steps=20, student_steps=50, n_test=1)
    assert set(result["held_out"]) == {"base", "PF", "PFD"}


@requires_deepmd
@pytest.mark.slow
def test_quick_recipe_with_classical_labeler(tmp_path):
    """The quick recipe long enough to learn (~6 min on 2 cores): the fine-tuned model beats
    the base, the student's Γ optical phonon is SW's within 1 THz."""
    result = _quick_sw_run(tmp_path, base_steps=1500, finetune_steps=300, student_steps=2000)
    held = result["held_out"]
    # the base knows SW diamond already; the fine-tuned model beats it on the vacancy cell,
    # which only the fine-tuning saw, and overall (measured: forces 0.28 vs 0.65 and 0.79 vs
    # 0.91 eV/Å, energies 1.3 vs 3.2 eV/atom, shift removed)
    pf, base = held["PF"], held["base"]
    vacancy = "diamond_vacancy"
    per = pf["per_phase"][vacancy], base["per_phase"][vacancy]
    assert per[0]["force_rmse_eV_A"] < per[1]["force_rmse_eV_A"]
    assert pf["force_rmse_eV_A"] < base["force_rmse_eV_A"]
    assert pf["energy_rmse_meV_atom"] < base["energy_rmse_meV_atom"]
    dft = result["phonons"]["DFT"]["special_points"]["Gamma"]
    pfd = result["phonons"]["PFD"]["special_points"]["Gamma"]
    assert abs(max(pfd) - max(dft)) < 1.0
    e_f = result["vacancy_formation_eV"]["PFD"]["diamond"]
    assert e_f is not None and np.isfinite(e_f) and e_f > 0


def test_validation_results_are_reused_until_the_model_changes(tmp_path):
    from pfd_ase.models import resolve_model
    from pfd_ase.recipes._base import validation_step

    def model_key(path):
        return {"model": resolve_model(path).identity}

    model = tmp_path / "model.pth"
    model.write_bytes(b"weights")
    calls = []

    def compute():
        calls.append(1)
        return {"Gamma": [0.0, 15.5]}

    store = validation_step(tmp_path / "run")  # steps validate.<key> of the run directory
    first = store("phonons_PF", compute, {**model_key(model), "supercell": (3, 3, 3)})
    again = store("phonons_PF", compute, {**model_key(model), "supercell": (3, 3, 3)})
    assert first == again == {"Gamma": [0.0, 15.5]} and len(calls) == 1
    store("phonons_PF", compute, {**model_key(model), "supercell": (2, 2, 2)})
    assert len(calls) == 2
    model.write_bytes(b"retrained weights")  # another model under the same name
    store("phonons_PF", compute, {**model_key(model), "supercell": (2, 2, 2)})
    assert len(calls) == 3
    assert (tmp_path / "run" / "state" / "validate.phonons_PF.json").exists()


def test_dft_validation_compares_like_with_like(tmp_path, monkeypatch):
    """With a DFT labeler (SW standing in, as if not classical) the models' phonons are
    computed in the DFT's supercell and the vacancy the DFT's way (unrelaxed, the same cell),
    so the deviations measure the models, not the protocol."""
    import pfd_ase.analysis.validate as validate
    import pfd_ase.recipes._base as base
    from pfd_ase.analysis.vacancy import vacancy_formation_energy
    from pfd_ase.analysis.validate import Subject
    from pfd_ase.calculators.labelers import make_labeler
    from pfd_ase.data import write_frames
    from pfd_ase.materials import silicon
    from pfd_ase.recipes.silicon import silicon_config

    from conftest import si_frames

    monkeypatch.setattr(base, "CLASSICAL", ())  # SW gets the DFT's treatment
    monkeypatch.setattr(
        base, "model_subject", lambda m, t=None: Subject(lambda: make_labeler("tersoff"), {}, t)
    )
    monkeypatch.setattr(validate, "model_errors", lambda sets, folder=None: {})
    config = silicon_config(tmp_path, preset="quick", labeler="sw", base_model="unused")
    write_frames(tmp_path / "data" / "labelled.extxyz", si_frames(2, seed=1))
    cell = silicon("diamond")
    validation = {
        "dft_phonon_supercell": (2, 2, 2),
        "vacancy_max_steps": 20,
        "dft_vacancy": {"phase": "diamond", "relax": False},
    }

    def validate(config):
        return base.validate_run(
            config,
            {"teacher": "tersoff", "student": None, "steps": {}},
            "like with like",
            validation,
            phonons={"primitive": silicon("diamond", primitive=True), "title": "phonons"},
            vacancies={"cells": {"diamond": cell}, "reference": cell, "title": "vacancy"},
        )

    result = validate(config)
    two = np.diag([2, 2, 2]).tolist()
    assert {k: v["supercell"] for k, v in result["phonons"].items()} == {"DFT": two, "PF": two}
    assert result["phonon_same_supercell"] == {"PF": True}
    versus = result["vacancy_vs_dft"]
    assert versus["phase"] == "diamond" and versus["relaxed"] is False
    sw = vacancy_formation_energy(cell, make_labeler("sw"), relax=False)["E_f_eV"]
    tersoff = vacancy_formation_energy(cell, make_labeler("tersoff"), relax=False)["E_f_eV"]
    assert versus["E_f_eV"] == pytest.approx({"DFT": sw, "PF": tersoff})
    assert versus["error_eV"]["PF"] == pytest.approx(tersoff - sw)
    assert abs(tersoff - sw) > 0.1  # two potentials: a difference to measure
    # the relaxed PF value of the same phase stays where it was, beside it
    assert result["vacancy_details"]["PF"]["diamond"]["relaxed"] is True
    report = (tmp_path / "report" / "report.md").read_text()
    assert "vacancy vs DFT (diamond, all unrelaxed" in report
    # the run directory spelled relative: every step reused, none redone (DFT is costly)
    records = sorted((tmp_path / "state").glob("validate.*.json"))
    stamps = {r.name: r.stat().st_mtime_ns for r in records}
    monkeypatch.chdir(tmp_path.parent)
    again = validate({**config, "workdir": tmp_path.name})
    assert again["phonon_max_dev_THz"] == result["phonon_max_dev_THz"]
    assert {r.name: r.stat().st_mtime_ns for r in records} == stamps


def _reference_setup(tmp_path, labeler):
    """A one-structure validation of a silicon run directory: 1 test frame of diamond,
    phonons in the primitive cell, the diamond vacancy unrelaxed in the conventional cell."""
    from pfd_ase.materials import silicon
    from pfd_ase.recipes.silicon import silicon_config

    config = silicon_config(tmp_path, preset="quick", labeler=labeler, base_model="unused")
    cell = silicon("diamond")
    validation = {
        "test_set": {"n_frames": 1, "structures": ["diamond"]},
        "dft_phonon_supercell": (1, 1, 1),
        "vacancy_max_steps": 5,
        "dft_vacancy": {"phase": "diamond", "relax": False},
    }
    phonons = {"primitive": silicon("diamond", primitive=True), "title": "phonons"}
    vacancies = {"cells": {"diamond": cell}, "reference": cell, "title": "vacancy"}
    return config, validation, phonons, vacancies


def test_references_beside_the_run_are_the_validations_own_steps(tmp_path, monkeypatch):
    """The labeler's references computed beside the run (records only, marked concurrent)
    are exactly the steps validate_run takes: it reuses every one, lists them in the
    summary, and sums their wall time apart from its own."""
    import pfd_ase.analysis.validate as validate
    import pfd_ase.recipes._base as base
    from pfd_ase.analysis.validate import Subject
    from pfd_ase.calculators.labelers import make_labeler
    from pfd_ase.data import write_frames

    from conftest import si_frames

    monkeypatch.setattr(base, "CLASSICAL", ())  # SW gets the DFT's treatment
    monkeypatch.setattr(
        base, "model_subject", lambda m, t=None: Subject(lambda: make_labeler("tersoff"), {}, t)
    )
    monkeypatch.setattr(validate, "model_errors", lambda sets, folder=None: {})

    def labels_only(config, models, settings, report, step):  # scores need trained models
        path, done = base.label_test_set(config, settings, step)
        return {"test_set": {"path": str(path), **done}}

    monkeypatch.setattr(base, "held_out_test", labels_only)
    config, validation, phonons, vacancies = _reference_setup(tmp_path, "sw")
    write_frames(tmp_path / "data" / "labelled.extxyz", si_frames(2, seed=1))

    keys = base.reference_steps(
        config, validation, phonons, vacancies, base.concurrent_step(tmp_path)
    )
    assert keys == ["test_label", "phonons_DFT", "vacancies_DFT"]
    assert not (tmp_path / "summary.json").exists()  # the run's summary is not the helper's
    records = {k: tmp_path / "state" / f"validate.{k}.json" for k in keys}
    assert all(json.loads(p.read_text())["concurrent"] for p in records.values())
    stamps = {k: p.stat().st_mtime_ns for k, p in records.items()}
    result = base.validate_run(
        config,
        {"teacher": "tersoff", "student": None, "steps": {}},
        "references",
        validation,
        phonons=phonons,
        vacancies=vacancies,
    )
    assert {k: p.stat().st_mtime_ns for k, p in records.items()} == stamps  # none redone
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {f"validate.{k}" for k in keys} <= set(summary["steps"])
    walls = result["stage_wall_s"]
    assert walls["concurrent"] == pytest.approx(
        sum(json.loads(p.read_text())["wall_s"] for p in records.values()), abs=0.2
    )
    assert result["vacancy_vs_dft"]["E_f_eV"]["DFT"] > 1.0  # SW's unrelaxed vacancy


def test_references_beside_run_in_their_own_process(tmp_path):
    """With a DFT labeler (GFN1-xTB) the references run in a spawned process while the body
    runs; afterwards the steps the validation would take in this process are all reused."""
    import pfd_ase.recipes._base as base

    config, validation, phonons, vacancies = _reference_setup(tmp_path, "xtb")
    with base.references_beside(config, validation, phonons, vacancies) as beside:
        assert beside.process.pid != os.getpid()
    assert beside.process.exitcode == 0 and beside.waited_s > 0
    records = sorted((tmp_path / "state").glob("validate.*.json"))
    assert [r.name for r in records] == [
        "validate.phonons_DFT.json",
        "validate.test_label.json",
        "validate.vacancies_DFT.json",
    ]
    stamps = {r.name: r.stat().st_mtime_ns for r in records}
    labelled = (tmp_path / "test" / "labelled.extxyz").read_text()
    base.reference_steps(config, validation, phonons, vacancies, base.validation_step(tmp_path))
    assert {r.name: r.stat().st_mtime_ns for r in records} == stamps
    assert (tmp_path / "test" / "labelled.extxyz").read_text() == labelled
    # a classical labeler: nothing is worth a process
    sw = _reference_setup(tmp_path / "sw", "sw")
    with base.references_beside(*sw) as none:
        assert none.process is None


def test_references_beside_a_failed_process_warns_and_the_body_still_runs(tmp_path):
    import pfd_ase.recipes._base as base

    config, validation, phonons, vacancies = _reference_setup(tmp_path, "xtb")
    config["labeler"] = {"name": "no-such-code", "overrides": {}}
    ran = []
    with pytest.warns(RuntimeWarning, match="validation computes them"):
        with base.references_beside(config, {**validation, "test_set": None}, phonons, None):
            ran.append(1)
    assert ran == [1]
    assert not list((tmp_path / "state").glob("validate.*.json"))


def test_references_beside_label_in_one_process_unless_the_run_sends_work_elsewhere():
    from pfd_ase.recipes._base import beside_executor

    assert beside_executor(None) is None
    assert beside_executor({"kind": "process", "max_workers": 2}) is None  # local cores
    assert beside_executor({"kind": "dask", "max_workers": 2}) is None  # a local cluster
    slurm = {"kind": "slurm", "slurm": {"partition": "cpu"}}
    assert beside_executor(slurm) == slurm
    dask = {"kind": "dask", "address": "tcp://scheduler:8786"}
    assert beside_executor(dask) == dask


def test_bad_input_fails_before_the_references_start(tmp_path, monkeypatch):
    import pfd_ase.recipes._base as base
    from pfd_ase.workflow.config import ConfigError

    started = []
    monkeypatch.setattr(base, "references_beside", lambda *a, **k: started.append(a))
    config, validation, phonons, vacancies = _reference_setup(tmp_path, "xtb")
    config["seed"] = -1
    with pytest.raises(ConfigError, match="seed must be a non-negative integer"):
        base.run_recipe(config, "bad", validation, phonons=phonons, vacancies=vacancies)
    assert started == []
