"""The held-out test set (pfd_ase.analysis.testset) and the silicon recipe's presets."""

from __future__ import annotations

import inspect

import numpy as np
import pytest


def _labelled(frames, calc):
    from pfd_ase.label import label_in_memory

    return label_in_memory(frames, calc)


def _si(names=("diamond", "bc8", "diamond_vacancy")):
    from pfd_ase.materials import silicon

    return {name: silicon(name) for name in names}


def test_test_set_is_seeded_and_never_the_training_draws():
    from pfd_ase.analysis.testset import make_test_set, structure_of
    from pfd_ase.workflow.config import InitConfig
    from pfd_ase.workflow.steps import perturb

    structures = _si()
    a = make_test_set(structures, 2, seed=0)
    b = make_test_set(structures, 2, seed=0)
    assert [f.info["pfd_frame_id"] for f in a] == [
        f"test.{name}.{k:03d}" for name in structures for k in range(2)
    ]
    assert [structure_of(f) for f in a] == [n for n in structures for _ in range(2)]
    assert all(np.array_equal(x.positions, y.positions) for x, y in zip(a, b, strict=True))
    assert not np.allclose(a[0].positions, make_test_set(structures, 2, seed=1)[0].positions)
    # the workflow's initial data of the same seed with the same perturbation size: other draws
    init = perturb(
        InitConfig(structures=None, n_perturb=2, cell_strain=0.03, displacement_A=0.07),
        structures,
        0,
    )
    for x, y in zip(a, init, strict=True):
        assert len(x) == len(y) and not np.allclose(x.positions, y.positions, atol=1e-3)
    # thermal-sized displacements: about 0.07 Å per coordinate
    d = np.concatenate([f.positions - structures[structure_of(f)].positions for f in a])
    assert 0.03 < np.std(d) < 0.5


def test_bad_test_set_input():
    from pfd_ase.analysis.testset import make_test_set, structure_of

    with pytest.raises(ValueError, match="n_frames"):
        make_test_set(_si(), 0, seed=0)
    with pytest.raises(ValueError, match="without '.'"):
        make_test_set({"a.b": _si()["diamond"]}, 1, seed=0)
    with pytest.raises(ValueError, match="not a test-set frame id"):
        structure_of(_si()["diamond"])


def test_scores_per_structure_with_the_energy_zero_removed():
    """A model equal to the labeler but for a constant energy per atom scores zero after the
    shift is removed and exactly that constant without; another potential scores per phase."""
    from pfd_ase.analysis.testset import make_test_set, score_models
    from pfd_ase.calculators.labelers import make_labeler

    sw, tersoff = make_labeler("sw"), make_labeler("tersoff")
    frames = _labelled(make_test_set(_si(), 2, seed=3), sw)
    shift = 0.25  # eV/atom
    for atoms in frames:
        atoms.calc.results["energy"] -= shift * len(atoms)
    scores = score_models({"same": sw, "other": tersoff}, frames)
    same, other = scores["same"], scores["other"]
    assert same["force_rmse_eV_A"] == pytest.approx(0.0, abs=1e-9)
    assert same["energy_rmse_meV_atom"] == pytest.approx(0.0, abs=1e-6)
    assert same["energy_rmse_raw_meV_atom"] == pytest.approx(1000 * shift, rel=1e-9)
    assert same["energy_shift_meV_atom"] == pytest.approx(1000 * shift, rel=1e-9)
    assert same["stress_rmse_GPa"] == pytest.approx(0.0, abs=1e-9)
    assert set(other["per_phase"]) == {"diamond", "bc8", "diamond_vacancy"}
    # per-structure force RMSEs combine (atom-weighted) into the overall one
    per = other["per_phase"]
    n = {"diamond": 8, "bc8": 16, "diamond_vacancy": 7}
    total = sum(n[p] * per[p]["force_rmse_eV_A"] ** 2 for p in per) / sum(n.values())
    assert other["force_rmse_eV_A"] == pytest.approx(np.sqrt(total), rel=1e-9)
    # and the force RMSE is the plain one over every component
    ref = np.concatenate([f.calc.results["forces"].ravel() for f in frames])
    pred = []
    for f in frames:
        c = f.copy()
        c.calc = tersoff
        pred.append(c.get_forces().ravel())
    rmse = np.sqrt(np.mean((np.concatenate(pred) - ref) ** 2))
    assert other["force_rmse_eV_A"] == pytest.approx(rmse, rel=1e-9)
    assert other["force_rmse_eV_A"] > 0.05 and other["stress_rmse_GPa"] > 0.1


def test_presets_one_meaning_each():
    """The function and the command line default to the same preset; the default preset's
    cells are at least 8 atoms (the vacancy 15), the production ones 32 (31) as in Table S2."""
    from pfd_ase.recipes._base import recipe_parser
    from pfd_ase.recipes._silicon_presets import STAGES
    from pfd_ase.recipes.silicon import PRESETS, run_silicon, silicon_config

    parser = recipe_parser("python -m pfd_ase.recipes.silicon", None)
    default = inspect.signature(run_silicon).parameters["preset"].default
    assert parser.parse_args([]).preset == default == "default"
    assert inspect.signature(silicon_config).parameters["preset"].default == default
    assert parser.parse_args(["--quick"]).preset == "quick"
    assert parser.parse_args(["--production"]).preset == "production"
    with pytest.raises(SystemExit):
        parser.parse_args(["--quick", "--production"])
    sizes = {}
    for preset in PRESETS:
        config = silicon_config("run", preset, labeler="sw")
        sizes[preset] = {k: len(v) for k, v in config["structures"].items()}
    assert min(sizes["default"].values()) >= 8 and sizes["default"]["diamond_vacancy"] >= 15
    assert sizes["default"]["bc8"] == 16
    assert sizes["production"] == {**dict.fromkeys(sizes["production"], 32), "diamond_vacancy": 31}
    assert sizes["quick"]["diamond_vacancy"] == 7
    # the student learns from teacher MD of every structure, stresses included; outside
    # --quick in cells of 32+ atoms (issue 14: the teacher explores 32-64-atom cells)
    from pfd_ase.recipes._base import trained_structures

    for preset in PRESETS:
        config = silicon_config("run", preset, labeler="sw")
        assert set(trained_structures(config)["PFD"]) == set(config["structures"])
        assert config["distill"]["virial"] is True
        min_atoms = config["distill"]["explore"]["min_atoms"]
        assert min_atoms >= (1 if preset == "quick" else 32)
    # the default preset's teacher weights the phases the validation scores (diamond's
    # phonons, its vacancy); names of its own structures, never in --quick
    from pfd_ase.recipes._silicon_presets import TEACHER_WEIGHTS

    weights = silicon_config("run", labeler="sw")["finetune"]["structure_weights"]
    assert weights == TEACHER_WEIGHTS and set(weights) <= set(STAGES["stage1"] + STAGES["stage3"])
    assert silicon_config("run", "quick", labeler="sw")["finetune"]["structure_weights"] is None
    with pytest.raises(ValueError, match="unknown preset"):
        silicon_config("run", "fast")
