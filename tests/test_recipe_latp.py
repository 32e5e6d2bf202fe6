"""The LATP recipe: command line, configuration of each preset (valid before any work)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest


def test_help():
    out = subprocess.run(
        [sys.executable, "-m", "pfd_ase.recipes.latp", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--quick" in out.stdout and "--labeler" in out.stdout and "the preset's" in out.stdout


@pytest.mark.parametrize(("preset", "labeler"), [("quick", "xtb"), ("default", "gpaw-lcao")])
def test_config_of_each_preset_is_valid(tmp_path, preset, labeler):
    from pfd_ase.recipes.latp import TYPE_MAP, latp_config
    from pfd_ase.workflow import load_config

    needed = {"xtb": "tblite", "gpaw-lcao": "gpaw"}[labeler]
    if importlib.util.find_spec(needed) is None:
        pytest.skip(f"{needed} missing")
    config = latp_config(tmp_path, preset=preset, base_model="7net-0")
    assert config["labeler"]["name"] == labeler
    assert config["type_map"] == TYPE_MAP
    structures = config["structures"]
    assert len(structures) == 2
    for atoms in structures.values():
        assert len(atoms) == 110 and atoms.get_chemical_formula() == "Al2Li8O72P18Ti10"
    a, b = structures.values()
    assert (a.numbers != b.numbers).any() or (a.positions != b.positions).any()  # 2 orderings
    (stage,) = config["finetune"]["stages"]
    assert stage["temperatures_K"] == [600.0, 900.0, 1200.0] and stage["pressures_GPa"] == [None]
    load_config(config)  # valid as written: keys, labeler settings, model, structures


def test_labeler_and_overrides_from_the_caller(tmp_path):
    pytest.importorskip("tblite")
    from pfd_ase.recipes.latp import latp_config

    config = latp_config(tmp_path, preset="quick", labeler_overrides={"accuracy": 0.5})
    assert config["labeler"]["overrides"] == {"mixer_damping": 0.2, "accuracy": 0.5}
    config = latp_config(tmp_path, preset="quick", labeler="emt")
    assert config["labeler"] == {"name": "emt", "overrides": {}}
    with pytest.raises(ValueError, match="unknown preset"):
        latp_config(tmp_path, preset="production")


def test_validation_without_phonons_runs_the_diffusion_study(tmp_path, monkeypatch):
    """validate_run with phonons and vacancies None and a diffusion section: each model in
    the small cell, the student in the large one, figures and report lines (EMT Cu standing
    in for the models: diffusion_study is redirected)."""
    pytest.importorskip("pymatgen.analysis.diffusion")
    from types import SimpleNamespace

    from ase.build import bulk

    import pfd_ase.analysis.diffusion as diffusion
    import pfd_ase.analysis.validate as validate

    # imported before models.resolve_model is patched: a module first imported under the
    # patch would keep the fake for the rest of the session
    import pfd_ase.calculators.pfd  # noqa: F401
    import pfd_ase.models as models
    import pfd_ase.recipes._base as base
    from pfd_ase.data import write_frames
    from pfd_ase.recipes.silicon import silicon_config

    from conftest import si_frames

    real = diffusion.diffusion_study
    seen = []

    def on_emt(model, *args, **kwargs):
        seen.append(model)
        return real("emt", *args, **kwargs)

    monkeypatch.setattr(diffusion, "diffusion_study", on_emt)
    monkeypatch.setattr(
        base, "model_subject", lambda m, t=None: validate.Subject(lambda: None, {}, t)
    )
    monkeypatch.setattr(validate, "model_errors", lambda sets, folder=None: {})
    monkeypatch.setattr(  # the models are names only here: an identity of the name
        models, "resolve_model", lambda m, head=None: SimpleNamespace(identity=f"fake:{m}")
    )
    config = silicon_config(tmp_path, preset="quick", labeler="sw", base_model="unused")
    write_frames(tmp_path / "data" / "labelled.extxyz", si_frames(2, seed=1))
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    settings = {
        "species": "Cu",
        "structure": cu.repeat(2),
        "large": cu.repeat((3, 2, 2)),
        "temperatures_K": [2000.0, 3000.0],
        "n_runs": 2,
        "steps": 100,
        "timestep_fs": 2.0,
        "sample_every": 5,
        "equilibration_steps": 20,
        "compare": {"temperatures_K": [3000.0], "n_runs": 1},
    }
    result = base.validate_run(
        config,
        {"teacher": "teacher.pth", "student": "student.pth", "steps": {}},
        "diffusion only",
        {},
        phonons=None,
        vacancies=None,
        diffusion=settings,
    )
    assert "phonons" not in result and "vacancy_formation_eV" not in result
    runs = result["diffusion"]
    assert set(runs) == {"PF_small", "PFD_small", "PFD_large"}
    assert [m[1]["model"] for m in seen] == ["teacher.pth", "student.pth", "student.pth"]
    assert runs["PFD_large"]["n_atoms"] == 48 and runs["PF_small"]["n_atoms"] == 32
    assert set(runs["PFD_large"]["D_cm2_s"]) == {"2000", "3000"}
    assert set(runs["PF_small"]["D_cm2_s"]) == {"3000"}
    assert "arrhenius" in runs["PFD_large"] and "arrhenius" not in runs["PF_small"]
    report = tmp_path / "report"
    assert (report / "arrhenius.png").exists() and (report / "msd_PFD_large.png").exists()
    assert "Cu diffusion, PFD large (48 atoms)" in (report / "report.md").read_text()
    assert runs["PFD_small"]["model_identity"] == "fake:student.pth"
    # walkers per model content: another student at the same path would run in another folder
    (where,) = (tmp_path / "validation" / "diffusion" / "PFD_small").iterdir()
    assert (where / "msd.png").exists()
