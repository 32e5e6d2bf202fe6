"""Smoke test of bench/md_stability.py on a tiny case: Stillinger-Weber as teacher and student."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms

from pfd_ase.materials import silicon

from conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("md_stability")


def test_energy_drift_of_a_known_series(bench):
    t = np.linspace(0.0, 2.0, 21)
    energy = 1.0 + 0.003 * t  # eV/atom: 3 meV/atom/ps
    drift = bench.energy_drift(t, energy)
    assert drift["drift_meV_atom_ps"] == pytest.approx(3.0)
    assert drift["max_abs_dE_meV_atom"] == pytest.approx(6.0)  # at 2 ps
    assert drift["std_about_fit_meV_atom"] == pytest.approx(0.0, abs=1e-9)
    energy[5] -= 0.010  # a dip of 10 meV/atom at 0.5 ps
    assert bench.energy_drift(t, energy)["max_abs_dE_meV_atom"] == pytest.approx(8.5)
    flat = bench.energy_drift(t, np.full_like(t, -4.0))
    assert flat["drift_meV_atom_ps"] == pytest.approx(0.0, abs=1e-12)
    assert flat["max_abs_dE_meV_atom"] == 0.0
    with pytest.raises(ValueError, match="two frames"):
        bench.energy_drift(t[:1], energy[:1])


def test_distributions_of_perfect_diamond(bench):
    atoms = silicon("diamond", 2)  # 64 atoms, a = 5.431 Å (SW)
    theta, density, coordination = bench.adf([atoms])
    assert coordination == pytest.approx(4.0)
    assert density.sum() * (theta[1] - theta[0]) == pytest.approx(1.0)
    assert theta[np.argmax(density)] == pytest.approx(109.0)  # the 108-110° bin: 109.47°
    r, g = bench.rdf([atoms], rmax_A=6.0)
    assert r[-1] < 0.5 * atoms.cell.lengths().min()  # cut to half the cell
    first = r < 2.8
    rho = len(atoms) / atoms.get_volume()
    dr = r[1] - r[0]
    assert np.sum(4 * np.pi * r[first] ** 2 * rho * g[first]) * dr == pytest.approx(4.0, rel=0.05)
    assert r[first][np.argmax(g[first])] == pytest.approx(2.35, abs=0.05)
    second = r < 4.0  # + 12 second neighbours at a/sqrt(2) = 3.84 Å
    assert np.sum(4 * np.pi * r[second] ** 2 * rho * g[second]) * dr == pytest.approx(16, rel=0.05)
    # relative L1: 0 when equal, 2 when disjoint
    a, b = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    x = np.array([0.0, 1.0, 2.0])
    assert bench.relative_l1(x, a, a) == 0.0 and bench.relative_l1(x, a, b) == 2.0


def test_sw_as_both_models_conserves_energy_and_matches_itself(bench, tmp_path):
    form = {
        "nve_size": 1,
        "nve_steps": 200,
        "nve_sample_every": 10,
        "nvt_size": 1,
        "nvt_equilibration_steps": 20,
        "nvt_steps": 80,
        "nvt_sample_every": 10,
    }
    out = bench.measure("sw", "sw", form, tmp_path, teacher_nve=True)
    nve = out["nve"]["student"]
    assert nve["status"] == "finished" and nve["n_atoms"] == 8
    assert len(nve["t_ps"]) == 21 and nve["simulated_ps"] == pytest.approx(0.2)
    assert nve["dE_meV_atom"][0] == 0.0
    # Velocity Verlet at 1 fs on SW Si: energy conserved to well under 1 meV/atom
    assert nve["max_abs_dE_meV_atom"] < 0.5 and abs(nve["drift_meV_atom_ps"]) < 1.0
    # momenta drawn at 1000 K: the crystal settles near half of it
    assert 250.0 < nve["mean_temperature_K"] < 800.0
    assert out["nve"]["teacher"]["dE_meV_atom"] == nve["dE_meV_atom"]  # same model, seed
    s = out["structure_1000K"]
    assert s["n_frames"] == {"student": 8, "teacher": 8} and s["n_atoms"] == 8
    assert s["rdf_l1"] == 0.0 and s["adf_l1"] == 0.0  # identical trajectories
    assert s["student_force_rmse_eV_A"] == pytest.approx(0.0, abs=1e-10)
    assert s["teacher_halves_adf_l1"] > 0.0  # two halves of a thermal run differ
    assert 3.5 < s["coordination"]["teacher"] < 4.5
    assert out["met"] == {"drift_meV_atom_ps": True, "max_abs_dE_meV_atom": True}
    assert set(out["headline"]) >= set(out["goal"]) >= {"drift_meV_atom_ps"}

    text = bench.table({**out, "form": "smoke"})
    assert "drift" in text and "met" in text
    png = tmp_path / "md.png"
    bench.plot(out, png)
    assert png.stat().st_size > 10_000
    json.dumps(out)  # serialisable as it is


def test_longer_bonds_are_seen_by_g_of_r_and_not_by_the_angles(bench):
    """A 'student' whose crystal is 5 % larger (bonds 2.47 Å, not 2.35 Å), same angles."""
    frames = []
    for scale in (1.0, 1.05):
        atoms = silicon("diamond", 1)
        atoms.set_cell(atoms.cell * scale, scale_atoms=True)
        frames.append([Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=True)])
    out = bench.compare_distributions(frames[1], frames[0])
    assert out["rdf_l1"] > 1.0  # first peaks at 2.35 and 2.47 Å do not overlap
    assert out["adf_l1"] == pytest.approx(0.0, abs=1e-12)  # same angles
    assert out["rmax_A"] < 0.5 * 5.431  # one grid for both: the smaller cell's
