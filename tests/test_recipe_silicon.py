"""The silicon recipe in its fastest form: tiny deepmd-kit base model, Stillinger-Weber as DFT."""

from __future__ import annotations

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

    config = silicon_config(tmp_path, quick=False, labeler="sw", base_model="chgnet")
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


@pytest.mark.slow
@requires_deepmd
def test_quick_recipe_with_classical_labeler(tmp_path):
    from pfd_ase.recipes.silicon import run_silicon
    from pfd_ase.training.stages import pretrain

    from conftest import si_frames

    lr = {"type": "exp", "start_lr": 2e-3, "stop_lr": 1e-5, "decay_steps": 100}
    base = pretrain(
        {"sw": si_frames(24, seed=21, displacement=0.05)},
        tmp_path / "base",
        steps=800,
        learning_rate=lr,
        progress=False,
    )
    result = run_silicon(
        tmp_path / "run",
        quick=True,
        labeler="sw",
        base_model=str(base.checkpoint),
        head="sw",
        overrides={
            "finetune": {"steps": 300, "learning_rate": lr},
            "distill": {"steps": 2000},
            "progress": False,
        },
    )
    report = tmp_path / "run" / "report"
    for name in (
        "summary.json",
        "report.md",
        "phonons.png",
        "vacancies.png",
        "parity_teacher_vs_dft.png",
        "parity_student_vs_dft.png",
    ):
        assert (report / name).stat().st_size > 0, name
    dft = result["phonons"]["DFT"]["special_points"]["Gamma"]
    pfd = result["phonons"]["PFD"]["special_points"]["Gamma"]
    assert np.all(np.abs(np.sort(dft)[:3]) < 0.05) and np.all(np.abs(np.sort(pfd)[:3]) < 0.05)
    assert max(dft) == pytest.approx(17.83, abs=0.1)  # SW Γ optical (phonopy, 3x3x3)
    assert abs(max(pfd) - max(dft)) < 1.0
    e_f = result["vacancy_formation_eV"]["PFD"]["diamond"]
    assert np.isfinite(e_f) and e_f > 0
