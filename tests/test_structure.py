"""Local structure (coordination, sp3 fraction, g(r)) and the amorphous-carbon builder."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, graphene

from pfd_ase.analysis.structure import coordination_numbers, radial_distribution, sp3_fraction
from pfd_ase.materials import amorphous_carbon


def test_sp3_fraction_of_diamond_and_graphene():
    diamond = bulk("C", "diamond", a=3.567, cubic=True)
    assert sp3_fraction(diamond) == 1.0
    assert (coordination_numbers(diamond, 1.85) == 4).all()
    sheet = graphene("C2", a=2.46, vacuum=5.0)
    sheet.pbc = True
    assert sp3_fraction(sheet) == 0.0
    assert (coordination_numbers(sheet, 1.85) == 3).all()
    with pytest.raises(ValueError, match="no Si"):
        sp3_fraction(diamond, symbol="Si")


def test_rdf_first_peak_of_diamond_is_the_bond():
    diamond = bulk("C", "diamond", a=3.567, cubic=True).repeat(3)
    r, g = radial_distribution([diamond, diamond], rmax_A=4.0, nbins=200)
    first = r[np.flatnonzero(g > 0)[0]]  # the nearest shell: the bond
    assert first == pytest.approx(3.567 * np.sqrt(3) / 4, abs=0.03)  # 1.545 Å
    second = r[np.argmax(g)]  # 12 second neighbours at a / sqrt(2)
    assert second == pytest.approx(3.567 / np.sqrt(2), abs=0.03)  # 2.522 Å
    assert g[(r > 1.6) & (r < 2.45)].max() == 0.0  # nothing between the shells
    # a cell thinner than 2 rmax is repeated: the 8-atom cube gives the supercell's g(r)
    small = bulk("C", "diamond", a=3.567, cubic=True)
    r_small, g_small = radial_distribution(small, rmax_A=4.0, nbins=200)
    assert np.allclose(r_small, r) and np.allclose(g_small, g)


@pytest.mark.parametrize("density", [2.3, 3.0])
def test_amorphous_carbon_density_distances_and_seed(density):
    atoms = amorphous_carbon(64, density_g_cm3=density, min_distance_A=1.3, seed=1)
    assert len(atoms) == 64 and atoms.pbc.all()
    grams = atoms.get_masses().sum() / 6.02214076e23
    assert grams / (atoms.get_volume() * 1e-24) == pytest.approx(density, rel=1e-9)
    d = atoms.get_all_distances(mic=True)[np.triu_indices(64, 1)]
    assert d.min() >= 1.3
    again = amorphous_carbon(64, density_g_cm3=density, min_distance_A=1.3, seed=1)
    assert np.allclose(again.positions, atoms.positions)
    other = amorphous_carbon(64, density_g_cm3=density, min_distance_A=1.3, seed=2)
    assert not np.allclose(other.positions, atoms.positions)


def test_amorphous_carbon_refuses_an_impossible_packing():
    with pytest.raises(ValueError, match="too dense"):
        amorphous_carbon(64, density_g_cm3=3.5, min_distance_A=2.0, max_attempts=2000)
    with pytest.raises(ValueError):
        amorphous_carbon(0)


def test_melt_quench_with_tersoff_carbon():
    """A melt-quench makes a bonded network from a random packing (Tersoff carbon)."""
    from pfd_ase.analysis.structure import melt_quench
    from pfd_ase.calculators import make_labeler

    pytest.importorskip("matscipy")
    start = amorphous_carbon(32, density_g_cm3=3.0, seed=3)
    calc = make_labeler("tersoff")
    quenched, info = melt_quench(
        start, calc, melt_steps=30, quench_steps=60, relax_steps=50, timestep_fs=0.5, seed=1
    )
    assert quenched.calc is None and start.calc is None and len(quenched) == 32
    start.calc = calc
    assert info["energy_eV_atom"] < start.get_potential_energy() / 32  # lower than the packing
    assert info["quench_rate_K_fs"] == pytest.approx(4700 / 30)
    assert info["min_distance_A"] > 1.1  # no collapsed atoms
    cn = coordination_numbers(quenched, 1.85)
    assert 2.0 < cn.mean() < 5.0  # a carbon network, neither gas nor collapsed
    with pytest.raises(ValueError):
        melt_quench(start, calc, melt_K=-1.0)


def test_carbon_recipe_config_and_help(tmp_path):
    import subprocess
    import sys

    from pfd_ase.recipes.carbon import carbon_config
    from pfd_ase.workflow import load_config

    for preset in ("quick", "default"):
        config = carbon_config(tmp_path, preset=preset)
        load_config(config)  # valid as written, sel included
        sizes = sorted({len(a) for a in config["structures"].values()})
        assert sizes[0] == 8 and sizes[-1] in (64, 84)
    assert carbon_config(tmp_path, preset="quick")["labeler"]["name"] == "xtb"
    out = subprocess.run(
        [sys.executable, "-m", "pfd_ase.recipes.carbon", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--quick" in out.stdout


def test_quench_validation_orchestration(tmp_path):
    from pfd_ase.analysis.report import report_lines
    from pfd_ase.analysis.validate import Subject, run_directly
    from pfd_ase.calculators import make_labeler
    from pfd_ase.recipes._base import quench_validation

    pytest.importorskip("matscipy")
    starts = [amorphous_carbon(16, seed=s) for s in (1, 2)]
    tersoff = Subject(lambda: make_labeler("tersoff"), {"labeler": "tersoff"})
    settings = dict(melt_steps=10, quench_steps=20, relax_steps=10, labeler_starts=1, seed=5)
    out = quench_validation(starts, {"PF": tersoff}, settings, run_directly, tmp_path, tersoff)
    assert out["quench"]["DFT"]["n_structures"] == 1 and out["quench"]["PF"]["n_structures"] == 2
    # the same calculator and seed on the same first start: the same structure
    assert out["quench"]["PF"]["energy_eV_atom"][0] == pytest.approx(
        out["quench"]["DFT"]["energy_eV_atom"][0]
    )
    assert all(0.0 <= f <= 1.0 for f in out["quench"]["PF"]["sp3_fractions"])
    assert set(out["rdf_rms_vs_dft"]) == {"PF"}
    assert (tmp_path / "rdf.png").exists()
    assert any("melt-quenched by PF" in line for line in report_lines(out))


@pytest.mark.slow
def test_carbon_quick_recipe_end_to_end_with_tersoff(tmp_path):
    """The whole carbon chain with Tersoff as the labeler and tiny training and quench."""
    pytest.importorskip("matscipy")
    from pfd_ase.recipes.carbon import run_carbon

    result = run_carbon(
        tmp_path / "run",
        preset="quick",
        labeler="tersoff",
        overrides={"finetune": {"chgnet_epochs": 2}, "distill": {"steps": 100, "n_frames": 10}},
        quench={"melt_steps": 20, "quench_steps": 40, "relax_steps": 20, "starts": 2},
    )
    assert set(result["quench"]) == {"DFT", "PF", "PFD"}
    assert result["quench"]["DFT"]["n_structures"] == 1
    assert set(result["rdf_rms_vs_dft"]) == {"PF", "PFD"}
    assert set(result["held_out"]) == {"base", "PF", "PFD"}
    assert (tmp_path / "run" / "report" / "rdf.png").exists()
