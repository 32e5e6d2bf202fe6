"""Polyisoprene recipe: chain and cluster builders, labelers for molecules (D3, vacuum box),
the recipe's configuration, and (slow) the whole quick chain with xTB labels."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list

needs_rdkit = pytest.mark.skipif(importlib.util.find_spec("rdkit") is None, reason="no rdkit")
needs_dftd3 = pytest.mark.skipif(importlib.util.find_spec("dftd3") is None, reason="no dftd3")
needs_tblite = pytest.mark.skipif(importlib.util.find_spec("tblite") is None, reason="no tblite")


# --------------------------------------------------------------------------- structures


@needs_rdkit
@pytest.mark.parametrize("isomer, dihedral", [("cis", 0.0), ("trans", 180.0)])
def test_chain_formula_isomer_and_bonding(isomer, dihedral):
    from pfd_ase.materials import chain_dihedrals, polyisoprene

    n = 5
    atoms = polyisoprene(n, isomer, seed=2)
    assert atoms.get_chemical_formula(mode="hill") == f"C{5 * n}H{8 * n + 2}"
    assert not atoms.pbc.any() and atoms.cell.rank == 0  # a molecule: no cell
    # every unit after the chain end has the isomer's C1-C2=C3-C4 dihedral
    angles = chain_dihedrals(atoms)[1:]
    off = np.abs((angles - dihedral + 180.0) % 360.0 - 180.0)
    assert off.max() < 20.0, angles
    # bonding: each H on one C at 1.09 Å, each C with 3 (sp2) or 4 (sp3) neighbours, and
    # two sp2 carbons per unit; nothing closer than a C-H bond
    i, j, d = neighbor_list("ijd", atoms, 1.7)
    assert d.min() > 1.0
    symbols = np.array(atoms.get_chemical_symbols())
    count = np.bincount(i, minlength=len(atoms))
    h = symbols == "H"
    assert (count[h] == 1).all()
    assert set(count[~h].tolist()) == {3, 4}
    assert (count[~h] == 3).sum() == 2 * n


@needs_rdkit
def test_chain_is_reproducible_and_bad_input_refused():
    from pfd_ase.materials import polyisoprene

    a, b = polyisoprene(3, "trans", seed=7), polyisoprene(3, "trans", seed=7)
    np.testing.assert_array_equal(a.positions, b.positions)
    with pytest.raises(ValueError, match="unknown isomer"):
        polyisoprene(3, "syndiotactic")
    with pytest.raises(ValueError, match="at least 1"):
        polyisoprene(0)


@needs_rdkit
def test_cluster_keeps_chains_whole_and_apart():
    from pfd_ase.materials import polyisoprene, polymer_cluster

    chains = [polyisoprene(2, "cis", seed=s) for s in range(3)]
    cluster = polymer_cluster(chains, min_gap_A=2.5, seed=4)
    assert len(cluster) == sum(len(c) for c in chains) and not cluster.pbc.any()
    molecule = cluster.get_array("molecule")
    d = cluster.get_all_distances()
    between = molecule[:, None] != molecule[None, :]
    assert d[between].min() >= 2.5
    assert d[between].min() < 2.5 + 0.3  # placed next to each other, not far away
    for k, chain in enumerate(chains):  # each chain moved rigidly: its distances are kept
        own = cluster[molecule == k]
        np.testing.assert_allclose(own.get_all_distances(), chain.get_all_distances(), atol=1e-9)
    with pytest.raises(ValueError, match="pbc=False"):
        polymer_cluster([bulk("C", "diamond", a=3.57)])
    with pytest.raises(ValueError, match="no chains"):
        polymer_cluster([])


# --------------------------------------------------------------------------- labelers


def _methane_pair() -> Atoms:
    """Two methane molecules 3.6 Å apart, no cell."""
    from ase.build import molecule

    a, b = molecule("CH4"), molecule("CH4")
    b.translate([3.6, 0.2, 0.1])
    return a + b


@needs_dftd3
def test_dispersion_is_the_labelers_energy_plus_d3_with_consistent_forces():
    from ase.calculators.fd import calculate_numerical_forces
    from dftd3.ase import DFTD3

    from pfd_ase.calculators.corrections import DispersionCorrected
    from pfd_ase.calculators.labelers import labeler_info

    atoms = _methane_pair()
    calc = DispersionCorrected(EMT(), "d3bj", "PBE")
    atoms.calc = calc
    e = atoms.get_potential_energy()
    e_emt = _methane_pair()
    e_emt.calc = EMT()
    e_d3 = _methane_pair()
    e_d3.calc = DFTD3(method="PBE", damping="d3bj")
    d3 = e_d3.get_potential_energy()
    assert d3 < -0.01  # two methanes attract
    assert e == pytest.approx(e_emt.get_potential_energy() + d3, abs=1e-10)
    np.testing.assert_allclose(
        atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-4), atol=2e-4
    )
    info = labeler_info(calc)
    assert info["name"] == "emt"
    assert info["settings"]["dispersion"] == {"name": "d3bj", "functional": "PBE"}


def test_vacuum_box_leaves_a_molecule_unchanged_and_periodic_cells_alone():
    from pfd_ase.calculators.corrections import InVacuum

    atoms = _methane_pair()
    reference = atoms.copy()
    reference.calc = EMT()
    atoms.calc = InVacuum(EMT(), vacuum_A=5.0)
    assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy())
    np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), atol=1e-12)
    assert atoms.cell.rank == 0  # the caller's frame keeps having no cell
    moved = atoms.copy()
    moved.translate([10.0, -3.0, 2.0])
    moved.calc = InVacuum(EMT(), vacuum_A=5.0)
    assert moved.get_potential_energy() == pytest.approx(atoms.get_potential_energy())
    cu = bulk("Cu", "fcc", a=3.7)
    cu.calc = InVacuum(EMT(), vacuum_A=5.0)
    plain = cu.copy()
    plain.calc = EMT()
    np.testing.assert_allclose(cu.get_stress(), plain.get_stress(), atol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        InVacuum(EMT(), vacuum_A=0.0)


def test_dispersion_and_vacuum_settings_are_checked_before_any_work():
    from pfd_ase.calculators.labelers import check_labeler_settings

    with pytest.raises(ValueError, match="own dispersion"):
        check_labeler_settings("xtb", {"dispersion": "d3bj"})
    with pytest.raises(ValueError, match="corrects a DFT labeler"):
        check_labeler_settings("emt", {"dispersion": "d3bj"})
    with pytest.raises(ValueError, match="unknown dispersion"):
        check_labeler_settings("vasp", {"dispersion": "d4"})
    with pytest.raises(ValueError, match="vacuum_A"):
        check_labeler_settings("emt", {"vacuum_A": "wide"})
    check_labeler_settings("emt", {"vacuum_A": 6.0})


@needs_dftd3
@pytest.mark.skipif(importlib.util.find_spec("gpaw") is None, reason="no gpaw")
def test_gpaw_gets_d3_and_a_box_with_its_provenance(tmp_path):
    from pfd_ase.calculators.corrections import DispersionCorrected, InVacuum
    from pfd_ase.calculators.labelers import labeler_info, make_labeler

    calc = make_labeler("gpaw-lcao", tmp_path, dispersion="d3bj", vacuum_A=6.0)
    assert isinstance(calc, InVacuum) and isinstance(calc.inner, DispersionCorrected)
    assert "stress" not in calc.implemented_properties  # LCAO: none
    info = labeler_info(calc)
    assert info["name"] == "gpaw"
    assert info["settings"]["mode"] == {"name": "lcao"}
    assert info["settings"]["vacuum_A"] == 6.0
    assert info["settings"]["dispersion"]["name"] == "d3bj"


# --------------------------------------------------------------------------- recipe


@needs_rdkit
@pytest.mark.parametrize("preset", ["quick", "default"])
def test_config_of_each_preset_is_valid_and_holds_molecules_out(tmp_path, preset):
    from pfd_ase.recipes._polyisoprene_presets import PRESETS
    from pfd_ase.recipes.polyisoprene import polyisoprene_config
    from pfd_ase.workflow import load_config

    config = polyisoprene_config(tmp_path / "run", preset)
    load_config(config)  # keys, labeler settings, model, structures, the student's sel
    train = set(PRESETS[preset]["molecules"]["train"])
    held_out = set(config["structures"]) - train
    assert {"cis_C65", "trans_C65", "cluster_3xC20"} <= held_out
    assert set(config["init"]["structures"]) == train
    assert set(config["finetune"]["stages"][0]["structures"]) == train
    assert set(config["distill"]["explore"]["structures"]) == train
    assert all(not a.pbc.any() for a in config["structures"].values())
    assert config["finetune"]["stages"][0]["pressures_GPa"] == [None]  # NVT: no cell
    assert config["type_map"] == ["C", "H"]
    overrides = config["labeler"]["overrides"]
    if config["labeler"]["name"] == "xtb":
        assert "dispersion" not in overrides  # GFN1-xTB's own D3
    else:
        assert overrides["dispersion"] == "d3bj" and overrides["vacuum_A"] > 0


@needs_rdkit
def test_recipe_command_line_help(capsys):
    from pfd_ase.recipes.polyisoprene import main

    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "C and H" in out


@pytest.mark.slow
@pytest.mark.deepmd
@needs_rdkit
@needs_tblite
def test_quick_chain_on_molecules_end_to_end(tmp_path, monkeypatch):
    """The whole chain on molecules without a cell: xTB labels, SevenNet fine-tune, a
    deepmd-kit student on non-periodic data, held-out scores per molecule."""
    from pfd_ase.recipes._polyisoprene_presets import QUICK
    from pfd_ase.recipes.polyisoprene import run_polyisoprene

    monkeypatch.setitem(QUICK, "stage", {**QUICK["stage"], "md_steps": 20, "n_select": 2})
    monkeypatch.setitem(QUICK, "explore", {**QUICK["explore"], "md_steps": 20})
    molecules = {**QUICK["molecules"], "train": ["cis_C20", "trans_C20"]}
    monkeypatch.setitem(QUICK, "molecules", molecules)
    result = run_polyisoprene(
        tmp_path / "run",
        "quick",
        overrides={
            "finetune": {"chgnet_epochs": 2},
            "distill": {"steps": 100, "n_frames": 10},
        },
    )
    held = result["held_out"]
    assert set(held) == {"base", "PF", "PFD"}
    rows = held["PF"]["per_phase"]
    assert {"cis_C65", "trans_C65", "cluster_3xC20", "cis_C20"} <= set(rows)
    for name in ("base", "PF", "PFD"):
        assert np.isfinite(held[name]["force_rmse_eV_A"])
        assert held[name]["stress_rmse_GPa"] is None  # molecules: no stress
    data = tmp_path / "run"
    assert any(data.rglob("nopbc"))  # the student's data are non-periodic systems
