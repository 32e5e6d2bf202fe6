"""Evaluation of models on labelled frames: errors and parity plots (EMT, no training)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from pfd_ase.training.evaluate import evaluate, parity_plot, predict

from conftest import emt_frames


def _relabel(frames, de_per_atom=0.0, df=(0.0, 0.0, 0.0), dstress=None):
    """Copies of ``frames`` whose labels are shifted by known amounts."""
    out = []
    for atoms in frames:
        r = atoms.calc.results
        new = atoms.copy()
        results = {
            "energy": r["energy"] + de_per_atom * len(atoms),
            "forces": r["forces"] + np.asarray(df),
            "stress": r["stress"] + (0.0 if dstress is None else np.asarray(dstress)),
        }
        new.calc = SinglePointCalculator(new, **results)
        out.append(new)
    return out


def _snapshot(frames):
    return [{k: np.array(v, copy=True) for k, v in a.calc.results.items()} for a in frames]


@pytest.fixture(scope="module")
def frames():
    return emt_frames(4, seed=11)


def test_labeler_itself_gives_exactly_zero_error(frames):
    res = evaluate(EMT(), frames)
    assert res["n_frames"] == 4
    assert res["n_atoms"] == sum(len(a) for a in frames)
    assert res["n_virial_frames"] == 4
    for key in ("energy", "force", "virial", "stress"):
        assert res[f"{key}_rmse"] == 0.0
        assert res[f"{key}_mae"] == 0.0
    assert len(res["frames"]) == 4
    assert all(row["force_max_error"] == 0.0 for row in res["frames"])


def test_known_shifts_give_known_errors(frames):
    before = _snapshot(frames)
    shifted = _relabel(frames, de_per_atom=0.0125)
    res = evaluate(EMT(), shifted)
    # labels 12.5 meV/atom above EMT: every per-atom energy error is -0.0125
    assert res["energy_rmse"] == pytest.approx(0.0125, abs=1e-12)
    assert res["energy_mae"] == pytest.approx(0.0125, abs=1e-12)
    assert all(row["energy_error"] == pytest.approx(-0.0125, abs=1e-12) for row in res["frames"])
    assert res["force_rmse"] == 0.0
    assert res["virial_rmse"] == 0.0

    # a constant 0.3 eV/Å on x: RMSE over components 0.3/sqrt(3), MAE 0.1, max norm 0.3
    res = evaluate(EMT(), _relabel(frames, df=(0.3, 0.0, 0.0)))
    assert res["energy_rmse"] == 0.0
    assert res["force_rmse"] == pytest.approx(0.3 / np.sqrt(3), rel=1e-12)
    assert res["force_mae"] == pytest.approx(0.1, rel=1e-12)
    assert res["frames"][0]["force_max_error"] == pytest.approx(0.3, rel=1e-12)

    # stress xx shifted by 1e-3 eV/Å³: one of 9 components, virial error -dσ·V/N per atom
    ds = 1e-3
    res = evaluate(EMT(), _relabel(frames, dstress=[ds, 0, 0, 0, 0, 0]))
    assert res["stress_rmse"] == pytest.approx(ds / 3, rel=1e-9)
    assert res["stress_mae"] == pytest.approx(ds / 9, rel=1e-9)
    per_atom = np.array([ds * a.get_volume() / len(a) for a in frames])
    assert res["virial_rmse"] == pytest.approx(np.sqrt(np.mean(per_atom**2) / 9), rel=1e-9)
    assert res["virial_mae"] == pytest.approx(np.mean(per_atom) / 9, rel=1e-9)
    for row, v in zip(res["frames"], per_atom, strict=True):
        assert row["virial_rmse"] == pytest.approx(v / 3, rel=1e-9)
    # the reference labels were not touched
    for snap, atoms in zip(before, frames, strict=True):
        for key, value in snap.items():
            np.testing.assert_array_equal(atoms.calc.results[key], value)


def test_predictions_do_not_touch_the_frames(frames):
    shifted = _relabel(frames, de_per_atom=1.0)
    before = _snapshot(shifted)
    calcs = [a.calc for a in shifted]
    preds = predict(EMT(), shifted)
    assert [a.calc for a in shifted] == calcs
    for snap, atoms, pred in zip(before, shifted, preds, strict=True):
        for key, value in snap.items():
            np.testing.assert_array_equal(atoms.calc.results[key], value)
        assert pred["energy"] == pytest.approx(snap["energy"] - len(atoms), abs=1e-9)
        assert pred["stress"].shape == (3, 3)


def test_non_periodic_frames_have_no_virial():
    atoms = molecule("H2O")
    atoms.calc = EMT()
    atoms.calc = SinglePointCalculator(
        atoms, energy=atoms.get_potential_energy() + 0.3, forces=atoms.get_forces()
    )
    res = evaluate(EMT(), [atoms])
    assert res["n_virial_frames"] == 0
    assert np.isnan(res["virial_rmse"]) and np.isnan(res["stress_mae"])
    assert res["frames"][0]["virial_rmse"] is None
    assert res["energy_rmse"] == pytest.approx(0.1, abs=1e-12)


def test_unlabelled_frames_and_bad_models_are_refused(frames):
    bare = frames[0].copy()
    with pytest.raises(ValueError, match="not labelled"):
        evaluate(EMT(), [bare])
    with pytest.raises(ValueError, match="no frames"):
        evaluate(EMT(), [])
    with pytest.raises(TypeError, match="ASE calculator"):
        evaluate(object(), frames)


def test_parity_plot_png(tmp_path, frames):
    shifted = _relabel(frames, de_per_atom=0.01, df=(0.05, 0.0, 0.0))
    res = evaluate(EMT(), shifted, return_predictions=True)
    paths = [
        parity_plot(shifted, res, tmp_path / "from_result.png", title="EMT vs shifted"),
        parity_plot(shifted, EMT(), tmp_path / "from_calc.png"),
        parity_plot(shifted, frames, tmp_path / "from_frames.png"),
    ]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_parity_plot_without_matplotlib(tmp_path, frames, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'pfd_ase\[analysis\]'"):
        parity_plot(frames, EMT(), tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()
