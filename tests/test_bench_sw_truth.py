"""Smoke test of bench/sw_truth.py: SW's own vacancy in 63 atoms, and the figures' logic."""

from __future__ import annotations

import pytest

from conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("sw_truth")


def test_sw_vacancy_in_63_atoms_is_its_cohesive_energy(bench):
    """Stillinger-Weber's diamond: every bond at the two-body minimum, every angle
    tetrahedral (no three-body energy), so removing an atom costs exactly its bonds: E_f =
    -E_bulk/N = 2 epsilon = 4.3366 eV, with no force on the neighbours (nothing to relax)."""
    relaxed = bench.vacancy_63({})["SW"]
    assert relaxed["n_atoms"] == 64 and relaxed["converged"]
    assert relaxed["E_f_eV"] == pytest.approx(-relaxed["E_bulk_eV"] / 64, abs=1e-6)
    assert relaxed["E_f_eV"] == pytest.approx(2 * 2.1683, abs=1e-3)


def test_headline_against_the_goals(bench):
    summary = {
        "held_out": {
            "PF": {"force_rmse_eV_A": 0.05, "energy_rmse_meV_atom": 3.0},
            "PFD": {"force_rmse_eV_A": 0.09, "energy_rmse_meV_atom": 8.0},
        },
        "phonons": {"DFT": {"supercell": [3, 3, 3]}, "PF": {"supercell": [3, 3, 3]}},
        "phonon_max_dev_THz": {"PF": 0.2, "PFD": 0.45},
    }
    vacancy = {
        name: {"E_f_eV": e, "converged": True, "steps": 10}
        for name, e in (("SW", 2.80), ("PF", 2.75), ("PFD", 3.1))
    }
    fig = bench.figures(summary, vacancy)
    assert fig["vacancy_63"]["PF"]["abs_err_eV"] == pytest.approx(0.05)
    assert fig["vacancy_63"]["SW"]["abs_err_eV"] is None
    head, met = bench.headline(fig)
    assert met == {
        "PF_phonons": True,
        "PF_vacancy": True,
        "PFD_phonons": False,
        "PFD_vacancy": False,
    }
    assert head["PFD"]["vacancy_63_abs_err_eV"] == pytest.approx(0.3)
