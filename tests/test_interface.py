"""Li/Li6PS5X interface recipe: argyrodite, bcc lithium and interface builders, the staged
configuration, the dH report lines, and (slow) the whole quick chain with xTB labels."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from ase.build import bulk
from ase.neighborlist import neighbor_list

needs_tblite = pytest.mark.skipif(importlib.util.find_spec("tblite") is None, reason="no tblite")


@pytest.fixture(scope="module")
def lpsc():
    from pfd_ase.materials import argyrodite

    return argyrodite("Cl", seed=0, n_orderings=30)


def test_argyrodite_composition_framework_symmetry_and_li_sites(lpsc):
    import spglib

    assert lpsc.get_chemical_formula(mode="hill") == "Cl4Li24P4S20"
    assert lpsc.cell.cellpar()[:3] == pytest.approx([9.859] * 3)
    # the framework without Li is the F-43m argyrodite lattice
    frame = lpsc[[s != "Li" for s in lpsc.get_chemical_symbols()]]
    cell = (frame.cell.array, frame.get_scaled_positions(), frame.numbers)
    assert spglib.get_spacegroup(cell, symprec=1e-3) == "F-43m (216)"
    i, j, d = neighbor_list("ijd", lpsc, 2.9)
    symbols = np.array(lpsc.get_chemical_symbols())
    # PS4 tetrahedra: four S at 2.03 Å around each P
    for p in np.flatnonzero(symbols == "P"):
        near = (i == p) & (symbols[j] == "S") & (d < 2.3)
        assert near.sum() == 4 and d[near] == pytest.approx([2.03] * 4, abs=0.01)
    # each Li tetrahedral: three S and one Cl, no other Li closer than 2.3 Å (one per pair)
    for li in np.flatnonzero(symbols == "Li"):
        mine = i == li
        assert ((symbols[j] == "S") & mine & (d < 2.6)).sum() == 3
        assert ((symbols[j] == "Cl") & mine & (d < 2.8)).sum() == 1
        assert not ((symbols[j] == "Li") & mine & (d < 2.0)).any()


def test_argyrodite_ordering_is_the_lowest_ewald_of_its_draws():
    from pfd_ase.materials import argyrodite

    one = argyrodite("Br", seed=3, n_orderings=1)
    many = argyrodite("Br", seed=3, n_orderings=25)  # the same first draw, and 24 more
    assert many.info["ewald_eV"] <= one.info["ewald_eV"]
    again = argyrodite("Br", seed=3, n_orderings=25)
    np.testing.assert_array_equal(again.positions, many.positions)
    assert argyrodite("I", n_orderings=1).cell.cellpar()[0] == pytest.approx(10.142)
    with pytest.raises(ValueError, match="unknown halogen"):
        argyrodite("F")
    with pytest.raises(ValueError, match="n_orderings"):
        argyrodite("Cl", n_orderings=0)


def test_lithium_cell_and_interface_geometry(lpsc):
    from pfd_ase.materials import lithium_bcc, stack_interface
    from pfd_ase.recipes.interface import KEPT_BONDS

    li = lithium_bcc()
    assert len(li) == 16 and li.cell.cellpar()[:3] == pytest.approx([6.88] * 3)
    top = lithium_bcc((3, 3, 3))
    out = stack_interface(lpsc, top, gap_A=2.0, strain="top", keep_bonds=KEPT_BONDS)
    assert len(out) == 106 and out.get_chemical_formula(mode="hill") == "Cl4Li78P4S20"
    assert out.info["mismatch_pct"] == pytest.approx([(3 * 3.44 - 9.859) / 9.859 * 100] * 2)
    assert out.info["strain_pct"]["bottom"] == [0.0, 0.0]
    assert out.info["strain_pct"]["top"] == pytest.approx([(9.859 / 10.32 - 1) * 100] * 2)
    np.testing.assert_allclose(out.cell.cellpar()[:2], [9.859, 9.859])
    side = out.get_array("side")
    z = out.positions[:, 2]
    # the gap between the outermost planes on both sides of the metal, through the boundary
    assert z[side == 1].min() - z[side == 0].max() == pytest.approx(2.0)
    assert out.cell[2, 2] - z[side == 1].max() + z[side == 0].min() == pytest.approx(2.0)
    # the metal kept its volume per atom; PS4 tetrahedra were not cut
    bottom_height = np.ptp(z[side == 0])
    assert bottom_height < 9.859  # one slab, not split across the boundary
    symbols = np.array(out.get_chemical_symbols())
    i, j, d = neighbor_list("ijd", out, 2.3)
    for p in np.flatnonzero(symbols == "P"):
        assert ((i == p) & (symbols[j] == "S")).sum() == 4
    shared = stack_interface(lpsc, top, strain="shared", keep_bonds=KEPT_BONDS)
    assert shared.info["strain_pct"]["bottom"][0] == pytest.approx(
        -shared.info["strain_pct"]["top"][0] * 10.32 / 9.859, rel=1e-6
    )


def test_interface_refuses_bad_input(lpsc):
    from ase import Atoms

    from pfd_ase.materials import lithium_bcc, stack_interface

    with pytest.raises(ValueError, match="strain"):
        stack_interface(lpsc, lithium_bcc(), strain="bottom")
    with pytest.raises(ValueError, match="gap_A"):
        stack_interface(lpsc, lithium_bcc(), gap_A=-1.0)
    with pytest.raises(ValueError, match="periodic"):
        stack_interface(lpsc, Atoms("Li2", positions=[[0, 0, 0], [0, 0, 3]]))
    with pytest.raises(ValueError, match="normal"):
        stack_interface(lpsc, bulk("Li", "bcc", a=3.44))  # primitive: c not normal to a, b
    # a bond along c everywhere: no layer can be cut
    chain = bulk("Li", "sc", a=2.0).repeat((1, 1, 3))
    with pytest.raises(ValueError, match="no layer"):
        stack_interface(lpsc, chain, keep_bonds={("Li", "Li"): 2.1})


@pytest.mark.parametrize("preset", ["quick", "default", "family"])
def test_config_of_each_preset_is_valid_and_staged(tmp_path, preset):
    from pfd_ase.recipes._interface_presets import PRESETS
    from pfd_ase.recipes.interface import interface_config
    from pfd_ase.workflow import load_config

    config = interface_config(tmp_path / "run", preset)
    load_config(config)
    stages = config["finetune"]["stages"]
    assert [s["name"] for s in stages] == [s["name"] for s in PRESETS[preset]["stages"]]
    if preset == "family":
        assert list(config["structures"]) == ["Li6PS5Cl", "Li6PS5Br", "Li6PS5I"]
        assert config["type_map"] == ["Li", "P", "S", "Cl", "Br", "I"]
    else:  # lithium, then the electrolyte, then the interface; the init data: lithium only
        assert [s["structures"] for s in stages] == [["Li_bcc"], ["Li6PS5Cl"], ["interface"]]
        assert config["init"]["structures"] == ["Li_bcc"]
        assert len(config["structures"]["interface"]) == 106
    quick = preset != "default"
    assert all(s["md_steps"] == (80 if quick else 300) for s in stages)


def test_relaxed_interface_is_kept_and_redone_when_its_inputs_change(tmp_path, tiny_models):
    from pfd_ase.recipes.interface import relaxed_interface

    atoms = bulk("Cu", "fcc", a=3.62, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=1)
    path = tmp_path / "structures" / "interface.extxyz"
    settings = {"fmax_eV_A": 1e-9, "max_steps": 3}
    model = tiny_models[1]["pth"]
    first = relaxed_interface(atoms, model, None, settings, path)
    assert np.abs(first.positions - atoms.positions).max() > 0  # moved by the model
    stamp = path.stat().st_mtime_ns
    again = relaxed_interface(atoms, model, None, settings, path)
    assert path.stat().st_mtime_ns == stamp  # read back, not relaxed again
    np.testing.assert_array_equal(again.positions, first.positions)
    other = relaxed_interface(atoms, tiny_models[2]["pth"], None, settings, path)
    assert (tmp_path / "structures" / "interface.extxyz.replaced").exists()
    assert other.info["relax_key"] != first.info["relax_key"]
    relaxed_interface(atoms, model, None, {**settings, "max_steps": 4}, path)
    assert (tmp_path / "structures" / "interface.extxyz.replaced.1").exists()


def test_dh_report_lines():
    from pfd_ase.analysis.report import report_lines

    stats = {
        "spearman_rho": 0.61,
        "force_error_eV_A": {
            "dH<=2": {"n": 150, "mean": 0.05, "median": 0.04, "p90": 0.1},
            "dH>2": {"n": 62, "mean": 0.21, "median": 0.2, "p90": 0.4},
        },
    }
    summary = {
        "dh_vs_error": {
            "bank": {"n_environments": 1234},
            "n_test_atoms": 212,
            "structures": ["interface"],
            "models": {"PF": stats},
        },
        "interface_strain": {"mismatch_pct": [4.676, 4.676], "bottom": [0, 0], "top": [-4.467] * 2},
    }
    text = "\n".join(report_lines(summary))
    assert "1234 environments" in text and "212 held-out atoms (interface" in text
    assert "PF: Spearman rho 0.61" in text and "dH > 2: 62 atoms, mean |ΔF| 0.210" in text
    assert "mismatch (top − bottom)/bottom +4.68 / +4.68 %" in text and "top -4.47" in text


@pytest.mark.slow
@pytest.mark.deepmd
@needs_tblite
def test_quick_interface_chain_end_to_end(tmp_path, monkeypatch):
    """Three stages on xTB labels, a student, held-out errors per subsystem and dH."""
    from pfd_ase.recipes._interface_presets import QUICK
    from pfd_ase.recipes.interface import run_interface

    stage = {**QUICK["stage"], "md_steps": 10, "n_select": 1, "max_iterations": 1}
    monkeypatch.setitem(QUICK, "stage", stage)
    monkeypatch.setitem(QUICK, "explore", {**QUICK["explore"], "md_steps": 10})
    monkeypatch.setitem(
        QUICK, "system", {**QUICK["system"], "relax": {"fmax_eV_A": 1.0, "max_steps": 5}}
    )
    result = run_interface(
        tmp_path / "run",
        "quick",
        overrides={"finetune": {"chgnet_epochs": 1}, "distill": {"steps": 50, "n_frames": 6}},
    )
    rows = result["held_out"]["PF"]["per_phase"]
    assert set(rows) == {"Li_bcc", "Li6PS5Cl", "interface"}
    dh = result["dh_vs_error"]
    assert dh["structures"] == ["interface"] and dh["n_test_atoms"] == 2 * 106
    assert set(dh["models"]) == {"PF", "base"}
    assert result["interface_strain"]["mismatch_pct"][0] == pytest.approx(4.676, abs=1e-3)
    assert (tmp_path / "run" / "report" / "dh_error.png").exists()


def test_changed_test_set_settings_keep_the_old_labels_aside(tmp_path):
    """A finished run whose test-set settings change relabels into a fresh folder; the old
    task folders are moved aside, not deleted, and not mixed with the new frames."""
    from pfd_ase.data import read_frames
    from pfd_ase.recipes._base import held_out_test

    config = {
        "workdir": str(tmp_path),
        "structures": {"cu": bulk("Cu", "fcc", a=3.6, cubic=True)},
        "seed": 0,
        "labeler": {"name": "emt", "overrides": {}},
    }
    first = held_out_test(config, {}, {"n_frames": 2, "displacement_A": 0.05}, tmp_path / "r")
    old = read_frames(first["test_set"]["path"])
    second = held_out_test(config, {}, {"n_frames": 2, "displacement_A": 0.1}, tmp_path / "r")
    new = read_frames(second["test_set"]["path"])
    assert len(new) == 2 and not np.allclose(new[0].positions, old[0].positions)
    kept = tmp_path / "test.replaced"
    assert kept.is_dir() and len(list(kept.glob("task.*"))) == 2
