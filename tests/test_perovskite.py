"""The perovskite recipe and what it is made of: BaTiO3 phases (space groups), the doped
cell, distinct sites, vacancy and molecule arithmetic, phase ordering, seekpath paths."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from pfd_ase.analysis.phases import (
    atoms_from_record,
    atoms_record,
    formula_units,
    inequivalent_sites,
    molecule_chemical_potential,
    phase_energies,
    phase_ordering,
    relax_phase,
    site_vacancies,
)
from pfd_ase.analysis.vacancy import space_group
from pfd_ase.materials import BATIO3_PHASES, batio3, doped_perovskite

SPACE_GROUPS = {"cubic": 221, "tetragonal": 99, "orthorhombic": 38, "rhombohedral": 160}


@pytest.mark.parametrize("phase", list(SPACE_GROUPS))
def test_batio3_phases_have_their_space_group(phase):
    atoms = batio3(phase)
    # tight tolerance: the polar displacements (0.05-0.1 Å) must survive, not round to cubic
    assert space_group(atoms, 1e-3) == SPACE_GROUPS[phase]
    n_fu = formula_units(atoms)
    assert n_fu == len(atoms) // 5
    assert {s: atoms.get_chemical_symbols().count(s) // n_fu for s in ("Ba", "Ti", "O")} == {
        "Ba": 1,
        "Ti": 1,
        "O": 3,
    }
    assert len(atoms) == (10 if phase == "orthorhombic" else 5)
    volume = atoms.get_volume() / formula_units(atoms)
    assert 62.0 < volume < 66.0  # 4.0 Å pseudo-cubic cell (Å^3 per formula unit)
    # each Ti sits in an octahedron of O at 1.75-2.3 Å
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, 2.3)
    for ti in np.flatnonzero(atoms.numbers == 22):
        near = j[i == ti]
        assert len(near) == 6 and (atoms.numbers[near] == 8).all()
        assert d[i == ti].min() > 1.75


def test_ferroelectric_phases_are_polar_and_cubic_is_not():
    cubic = batio3("cubic")
    ti = cubic[[a.index for a in cubic if a.symbol == "Ti"]]
    assert np.allclose(ti.get_scaled_positions(), 0.5)
    for phase in ("tetragonal", "rhombohedral"):
        atoms = batio3(phase)
        ti = atoms.get_scaled_positions()[atoms.numbers == 22][0]
        assert not np.allclose(ti, 0.5, atol=0.005)


def test_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="unknown BaTiO3 phase"):
        batio3("monoclinic")
    assert set(BATIO3_PHASES) == set(SPACE_GROUPS)


def test_doped_perovskite_composition_and_seeds():
    a = doped_perovskite(seed=0)
    assert len(a) == 40
    assert a.get_chemical_formula() == "Ba4Bi2Na2O24Ti7Zr"
    assert (doped_perovskite(seed=0).numbers == a.numbers).all()  # reproducible
    others = [doped_perovskite(seed=s).numbers for s in range(1, 6)]
    assert any((n != a.numbers).any() for n in others)  # other seeds, other orderings

    # substitution only: same sites as the 2x2x2 cubic cell
    def sites(atoms):
        return sorted(map(tuple, np.round(atoms.positions, 6)))

    assert sites(a) == sites(batio3("cubic").repeat(2))


def test_doped_perovskite_refuses_fractions_without_whole_atoms():
    with pytest.raises(ValueError, match="whole atoms"):
        doped_perovskite(fractions={"A": {"Ba": 0.3, "Na": 0.7}, "B": {"Ti": 1.0}})
    with pytest.raises(ValueError, match="add to 1"):
        doped_perovskite(fractions={"A": {"Ba": 0.5}, "B": {"Ti": 1.0}})


@pytest.mark.parametrize(
    ("phase", "n_sites"),
    [("cubic", 1), ("tetragonal", 2), ("orthorhombic", 2), ("rhombohedral", 1)],
)
def test_distinct_oxygen_sites(phase, n_sites):
    atoms = batio3(phase)
    sites = inequivalent_sites(atoms, "O")
    assert len(sites) == n_sites
    assert all(atoms[i].symbol == "O" for i in sites)
    # the same classes in a supercell (translations add no new site)
    assert len(inequivalent_sites(atoms.repeat(2), "O")) == n_sites
    with pytest.raises(ValueError, match="no Zr"):
        inequivalent_sites(atoms, "Zr")


def _nearest_neighbour_lj():
    """FCC argon-like crystal with a pair potential cut between the 1st and 2nd shells."""
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)  # 32 atoms, d1 = 3.72 Å, d2 = 5.26
    return atoms, LennardJones(sigma=3.4, epsilon=0.0104, rc=4.5, smooth=False)


def test_vacancy_formation_known_answer_for_a_pair_potential():
    # a nearest-neighbour pair potential: E_bulk = 6 N phi, a vacancy breaks 12 bonds, so
    # unrelaxed E_f = E(cell - X) - E(cell) + mu = -12 phi + mu = mu - 2 E_bulk / N
    atoms, calc = _nearest_neighbour_lj()
    atoms.calc = calc
    e_per_atom = atoms.get_potential_energy() / len(atoms)
    assert e_per_atom < 0
    mu = -0.123
    res = site_vacancies(atoms, calc, "Ar", mu, relax=False)
    assert list(res["sites"]) == ["0"]  # one distinct site in FCC
    assert res["E_f_eV"] == pytest.approx(mu - 2 * e_per_atom, abs=1e-9)
    assert res["site"] == 0 and res["n_atoms"] == 32 and res["mu_eV"] == mu
    # relaxing can only lower the vacancy cell's energy
    relaxed = site_vacancies(atoms, calc, "Ar", mu, relax=True, max_steps=50)
    assert relaxed["E_f_eV"] <= res["E_f_eV"] + 1e-9


def test_molecule_chemical_potential_is_half_the_relaxed_dimer():
    calc = EMT()
    res = molecule_chemical_potential(calc, "O2", bond_A=1.35, box_A=9.0)
    assert res["converged"] and res["mu_eV"] == pytest.approx(res["energy_eV"] / 2)
    # relaxed: a dimer at the relaxed bond has no force; its energy is the lowest nearby
    from ase import Atoms

    def energy(d):
        dimer = Atoms("O2", positions=[[0, 0, 0], [0, 0, d]], cell=[9.0] * 3, pbc=True)
        dimer.calc = EMT()
        return dimer.get_potential_energy()

    d = res["bond_A"]
    assert energy(d) <= min(energy(d - 0.02), energy(d + 0.02)) + 1e-6
    assert res["energy_eV"] == pytest.approx(energy(d), abs=1e-6)
    with pytest.raises(ValueError, match="homonuclear"):
        molecule_chemical_potential(calc, "CO")


def test_relax_phase_keeps_the_space_group():
    atoms = bulk("Cu", "hcp", a=2.6, c=4.5)  # c/a off the EMT minimum
    assert space_group(atoms, 1e-3) == 194
    relaxed, rec = relax_phase(atoms, EMT(), relax_cell=True, fmax_eV_A=0.005)
    assert rec["converged"] and rec["spacegroup"] == rec["spacegroup_relaxed"] == 194
    assert rec["n_fu"] == 2 and rec["energy_fu_eV"] == pytest.approx(rec["energy_eV"] / 2)
    atoms.calc = EMT()
    assert rec["energy_eV"] < atoms.get_potential_energy()
    assert not np.allclose(relaxed.cell.cellpar(), atoms.cell.cellpar())
    # the record round-trips (fractional -> Cartesian -> fractional: to the last bits only)
    again, record = atoms_record(atoms_from_record(atoms_record(relaxed))), atoms_record(relaxed)
    assert again["numbers"] == record["numbers"]
    for key in ("cell", "scaled_positions"):
        np.testing.assert_allclose(again[key], record[key], rtol=0, atol=1e-12)


def test_phase_energies_and_ordering_against_a_reference():
    phases = {"fcc": bulk("Cu", "fcc", a=3.6), "bcc": bulk("Cu", "bcc", a=2.87)}
    res = phase_energies(phases, EMT(), relax=False)
    assert res["relative_meV_fu"]["fcc"] == 0.0
    assert res["order"] == ["fcc", "bcc"]  # EMT Cu: FCC below BCC
    wrong = {"relative_meV_fu": {"fcc": 0.0, "bcc": -5.0}, "order": ["bcc", "fcc"]}
    out = phase_ordering({"DFT": res, "model": wrong}, expected=["fcc", "bcc"])
    assert out["DFT"]["expected_order"] and out["DFT"]["same_order_as_reference"] is None
    assert out["model"]["expected_order"] is False
    assert out["model"]["same_order_as_reference"] is False
    expected_error = -5.0 - res["relative_meV_fu"]["bcc"]
    assert out["model"]["error_meV_fu"]["bcc"] == pytest.approx(expected_error)
    assert out["model"]["max_abs_error_meV_fu"] == pytest.approx(abs(expected_error))


def test_seekpath_path_of_the_cubic_phase():
    from pfd_ase.analysis.phonons import seekpath_path

    primitive, segments = seekpath_path(batio3("cubic"))
    assert len(primitive) == 5
    labels = [[lab for lab, _ in seg] for seg in segments]
    assert labels[0][:3] == ["Γ", "X", "M"] and "R" in labels[0]
    points = {lab: q for seg in segments for lab, q in seg}
    assert np.allclose(points["R"], [0.5, 0.5, 0.5]) and np.allclose(points["Γ"], 0.0)


def test_molecule_labeler_settings(tmp_path):
    from pfd_ase.calculators.labelers import molecule_labeler

    with pytest.raises(ValueError, match="multiplicity"):
        molecule_labeler("emt", multiplicity=0)
    pytest.importorskip("gpaw")
    from pfd_ase.calculators import labeler_info

    calc = molecule_labeler("gpaw", tmp_path, multiplicity=3, mode={"name": "pw", "ecut": 400.0})
    settings = labeler_info(calc)["settings"]
    assert settings["spinpol"] is True and settings["kpts"]["size"] == [1, 1, 1]
    assert settings["mode"]["ecut"] == 400.0  # the run's settings kept


def test_help():
    out = subprocess.run(
        [sys.executable, "-m", "pfd_ase.recipes.perovskite", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--quick" in out.stdout and "--labeler" in out.stdout


@pytest.mark.parametrize("preset", ["quick", "default"])
def test_config_of_each_preset_is_valid(tmp_path, preset):
    from pfd_ase.recipes.perovskite import TYPE_MAP, perovskite_config
    from pfd_ase.workflow import load_config

    config = perovskite_config(tmp_path, preset=preset)
    load_config(config)  # valid as written: keys, labeler settings, model, structures
    elements = {s for atoms in config["structures"].values() for s in atoms.get_chemical_symbols()}
    assert elements == set(TYPE_MAP)
    assert config["labeler"]["name"] == "gpaw"
    assert config["labeler"]["overrides"]["mode"]["ecut"] == 500.0
    (stage,) = config["finetune"]["stages"]
    assert set(stage["structures"]) >= {"cubic", "tetragonal", "orthorhombic", "rhombohedral"}
    assert "cubic_vO" not in stage["structures"]  # DFT labels stay on the small cells
    assert len(config["structures"]["cubic_vO"]) == 39
    with pytest.raises(ValueError, match="unknown preset"):
        perovskite_config(tmp_path, preset="huge")


@pytest.mark.slow
def test_quick_recipe_end_to_end_with_a_cheap_labeler(tmp_path):
    """The whole chain with CHGNet as the labeler (seconds a frame) and tiny training."""
    from pfd_ase.recipes.perovskite import run_perovskite

    overrides = {
        "finetune": {"steps": 20, "chgnet_epochs": 1},
        "distill": {"steps": 100, "n_frames": 10},
    }
    workdir = tmp_path / "run"
    result = run_perovskite(workdir, preset="quick", labeler="chgnet", overrides=overrides)
    ordering = result["phase_ordering"]
    assert set(ordering) == {"DFT", "base", "PF", "PFD"}
    assert ordering["DFT"]["same_order_as_reference"] is None
    assert all(ordering[m]["max_abs_error_meV_fu"] is not None for m in ("base", "PF", "PFD"))
    defects = result["defects"]
    assert list(defects["DFT"]["phases"]) == ["cubic"]  # the labeler: the cubic cell only
    assert set(defects["PF"]["phases"]) == set(SPACE_GROUPS)
    assert len(defects["PF"]["phases"]["tetragonal"]["sites"]) == 2  # apical and equatorial O
    assert defects["PF"]["phases"]["orthorhombic"]["n_atoms"] == 80
    assert set(result["soft_modes"]["DFT"]) == {"cubic"}
    assert {"Γ", "X", "M", "R"} <= set(result["soft_modes"]["DFT"]["cubic"])
    report = workdir / "report"
    text = (report / "report.md").read_text()
    assert "Phase energies" in text and "Vacancy formation energy" in text
    for png in ("phase_energies", "vacancies", *(f"phonons_{p}" for p in SPACE_GROUPS)):
        assert (report / f"{png}.png").exists()
    assert set(result["held_out"]) == {"base", "PF", "PFD"}


def test_phase_validation_refuses_a_labeler_without_its_molecule(tmp_path):
    from pfd_ase.analysis.validate import Subject, run_directly
    from pfd_ase.recipes._base import phase_validation

    labeler = Subject(EMT, {"labeler": "emt"})
    settings = {"defect": {"symbol": "O", "molecule": "O2", "dft_phases": ["fcc"]}}
    with pytest.raises(ValueError, match="molecule_labeler"):
        phase_validation({"fcc": bulk("Cu")}, {}, settings, run_directly, tmp_path, labeler)


def test_phase_validation_with_emt_copper(tmp_path):
    """The orchestration on a cheap case: one calculator as labeler and model must agree."""
    from pfd_ase.analysis.report import report_lines
    from pfd_ase.analysis.validate import Subject, run_directly
    from pfd_ase.recipes._base import phase_validation

    phases = {"fcc": bulk("Cu", "fcc", a=3.6), "bcc": bulk("Cu", "bcc", a=2.87)}
    settings = {
        "compound": "Cu",
        "fmax_eV_A": 0.01,
        "max_steps": 20,
        "expected_order": ["fcc", "bcc"],
        "defect": {
            "symbol": "Cu",
            "molecule": "Cu2",
            "multiplicity": 1,
            "supercells": {"fcc": 3, "bcc": 3},
            "relax": True,
            "max_steps": 30,
            "dft_phases": ["fcc"],
            "dft_relax": False,
        },
        "phonons": {"supercell": 2, "npoints": 5, "dft_phases": ["fcc"]},
    }
    out = phase_validation(
        phases,
        {"PF": Subject(EMT, {"model": "emt"})},
        settings,
        run_directly,
        tmp_path,
        labeler=Subject(EMT, {"labeler": "emt"}),
        molecule_labeler=EMT,
    )
    ordering = out["phase_ordering"]
    assert ordering["DFT"]["order"] == ["fcc", "bcc"] and ordering["DFT"]["expected_order"]
    assert ordering["PF"]["max_abs_error_meV_fu"] == pytest.approx(0.0, abs=1e-6)
    assert list(out["defects"]["DFT"]["phases"]) == ["fcc"]
    assert set(out["defects"]["PF"]["phases"]) == {"fcc", "bcc"}
    # the same calculator computed the labeler's way gives the labeler's value exactly
    same = out["defects"]["PF"]["unrelaxed"]["fcc"]["E_f_eV"]
    assert same == pytest.approx(out["defects"]["DFT"]["phases"]["fcc"]["E_f_eV"], abs=1e-9)
    # relaxing lowers it
    assert out["defects"]["PF"]["phases"]["fcc"]["E_f_eV"] <= same + 1e-9
    assert set(out["soft_modes"]) == {"DFT", "PF"} and set(out["soft_modes"]["DFT"]) == {"fcc"}
    assert min(out["soft_modes"]["PF"]["fcc"].values()) > -0.1  # FCC Cu: no imaginary mode
    for png in ("phase_energies", "vacancies", "phonons_fcc", "phonons_bcc"):
        assert (tmp_path / f"{png}.png").exists()
    text = "\n".join(report_lines(out))
    assert "fcc < bcc" in text and "unrelaxed as the DFT's" in text
