"""Phonons and vacancy formation energies with classical Si potentials (seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk

from pfd_ase.analysis.phonons import phonon_bands, plot_phonon_bands
from pfd_ase.analysis.vacancy import (
    STABILITY_CHECK,
    plot_vacancy_bars,
    vacancy_formation_energy,
    vacancy_supercells,
)
from pfd_ase.calculators.labelers import make_labeler
from pfd_ase.materials import silicon_phases

pytest.importorskip("phonopy")
pytest.importorskip("matscipy")

# Stillinger-Weber Si at its minimum a = 5.431 Å, phonopy 3×3×3 (notes/facts.md)
SW_GAMMA_OPTICAL = 17.83
SW_X = [6.65, 6.65, 12.99, 12.99, 15.63, 15.63]
TERSOFF_GAMMA_OPTICAL = 16.07


@pytest.fixture(scope="module")
def sw():
    return make_labeler("sw")


@pytest.fixture(scope="module")
def sw_bands(sw):
    return phonon_bands(bulk("Si", "diamond", a=5.431), sw)


def test_sw_phonons_match_reference(sw_bands):
    gamma = np.array(sw_bands["special_points"]["Gamma"])
    assert np.all(np.abs(gamma[:3]) < 0.05)
    np.testing.assert_allclose(gamma[3:], SW_GAMMA_OPTICAL, atol=0.1)
    np.testing.assert_allclose(sw_bands["special_points"]["X"], SW_X, atol=0.1)
    assert len(sw_bands["special_points"]["L"]) == 6
    np.testing.assert_allclose(sw_bands["special_qpoints"]["X"], [0.5, 0.0, 0.5])
    np.testing.assert_allclose(sw_bands["special_qpoints"]["L"], [0.5, 0.5, 0.5])


def test_calculator_factory_gives_the_same_phonons(sw_bands):
    made = []

    def factory():
        made.append(make_labeler("sw"))
        return made[-1]

    bands = phonon_bands(bulk("Si", "diamond", a=5.431), factory)
    assert len(made) == bands["n_displacements"] + 1  # a fresh one per supercell (+ residual)
    np.testing.assert_allclose(bands["frequencies_THz"], sw_bands["frequencies_THz"], atol=1e-10)


def test_phonon_result_layout(sw_bands):
    r = json.loads(json.dumps(sw_bands))  # JSON-safe
    assert r["labels"] == ["Γ", "X", "U|K", "Γ", "L"]
    assert len(r["label_distances"]) == len(r["labels"])
    assert np.all(np.diff(r["label_distances"]) >= 0)
    freqs = np.array(r["frequencies_THz"])
    assert freqs.shape == (len(r["distances"]), 6)
    assert len(r["distances"]) == 4 * 51  # Γ-X, X-U, K-Γ, Γ-L
    assert np.all(np.diff(r["distances"]) >= 0)
    assert r["supercell"] == [[3, 0, 0], [0, 3, 0], [0, 0, 3]]
    assert r["displacement_A"] == 0.01
    assert r["n_displacements"] == 1  # diamond: one symmetry-inequivalent displacement
    # the sampled path reaches the exact special-point frequencies
    np.testing.assert_allclose(sorted(freqs[0]), r["special_points"]["Gamma"], atol=1e-6)
    np.testing.assert_allclose(sorted(freqs[-1]), r["special_points"]["L"], atol=1e-6)


def test_phonons_leave_input_alone_and_tersoff():
    prim = bulk("Si", "diamond", a=5.431)
    before = prim.copy()
    r = phonon_bands(prim, make_labeler("tersoff"), npoints=5, path="GX")
    assert prim == before and prim.calc is None
    assert r["labels"] == ["Γ", "X"] and len(r["distances"]) == 5
    np.testing.assert_allclose(r["special_points"]["Gamma"][3:], TERSOFF_GAMMA_OPTICAL, atol=0.1)


def test_plot_phonon_bands(sw_bands, tmp_path):
    other = dict(sw_bands, frequencies_THz=(np.array(sw_bands["frequencies_THz"]) * 0.97).tolist())
    out = plot_phonon_bands(
        {"DFT": sw_bands, "PF": other, "PFD": sw_bands}, tmp_path / "p" / "ph.png", "Si"
    )
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"


SPACEGROUPS = {
    "diamond": 227,
    "hex_diamond": 194,
    "fcc": 225,
    "bcc": 229,
    "hcp": 194,
    "beta_sn": 141,
    "bc8": 206,
}


def test_silicon_phases_space_groups():
    spglib = pytest.importorskip("spglib")
    phases = silicon_phases()
    assert set(phases) == set(SPACEGROUPS)
    for name, atoms in phases.items():
        cell = (np.array(atoms.cell), atoms.get_scaled_positions(), atoms.numbers)
        dataset = spglib.get_symmetry_dataset(cell, symprec=1e-3)
        assert dataset.number == SPACEGROUPS[name], name
        assert set(atoms.get_chemical_symbols()) == {"Si"}
    assert len(phases["bc8"]) == 16 and len(phases["hex_diamond"]) == 4
    # fourfold coordination at ~2.35 Å in the tetrahedral phases
    from ase.neighborlist import neighbor_list

    for name in ("diamond", "hex_diamond", "bc8"):
        i, d = neighbor_list("id", phases[name], 2.6)
        assert np.all(np.bincount(i) == 4), name
        assert 2.25 < d.min() < 2.40, name


def test_vacancy_supercell_sizes():
    phases = silicon_phases()
    full = {k: len(v) for k, v in vacancy_supercells(phases, quick=False).items()}
    expected = {"diamond": 32, "bc8": 128, "beta_sn": 64, "fcc": 108, "hex_diamond": 108, "hcp": 64}
    assert {k: full[k] for k in expected} == expected
    quick = {k: len(v) for k, v in vacancy_supercells(phases, quick=True).items()}
    assert set(quick) == set(phases)
    assert all(8 <= n <= 32 for n in quick.values()), quick
    assert all(quick[k] < full[k] for k in expected)
    # unknown phases get a supercell too
    extra = vacancy_supercells({"x": bulk("Si", "diamond", a=5.431)}, quick=True)
    assert len(extra["x"]) >= 8


def test_vacancy_formation_energy_sw(sw):
    cell = vacancy_supercells({"diamond": silicon_phases()["diamond"]})["diamond"]
    before = cell.copy()
    r = vacancy_formation_energy(cell, sw)
    assert cell == before and cell.calc is None
    json.dumps(r)
    n = r["n_atoms"]
    assert n == 32
    assert np.isfinite(r["E_f_eV"]) and 0 < r["E_f_eV"] < 10
    expected = r["E_vac_eV"] - (n - 1) / n * r["E_bulk_eV"]
    assert r["E_f_eV"] == pytest.approx(expected, abs=1e-9)
    assert r["mu_eV"] == pytest.approx(r["E_bulk_eV"] / n)
    assert r["converged"] and r["reference"] == "bulk"

    mu = -4.3
    rm = vacancy_formation_energy(cell, sw, mu_eV=mu)
    assert rm["E_f_eV"] == pytest.approx(rm["E_vac_eV"] - rm["E_bulk_eV"] + mu, abs=1e-9)
    assert rm["mu_eV"] == mu and rm["reference"] == "mu"
    assert cell == before


def test_vacancy_relaxation_lowers_energy():
    # Tersoff relaxes the vacancy's neighbours (SW's forces vanish by symmetry)
    tersoff = make_labeler("tersoff")
    cell = bulk("Si", "diamond", a=5.432, cubic=True).repeat((2, 1, 1))
    fixed = vacancy_formation_energy(cell, tersoff, relax=False)
    relaxed = vacancy_formation_energy(cell, tersoff, fmax_eV_A=0.05)
    assert relaxed["steps"] > 0 and relaxed["converged"]
    assert relaxed["E_f_eV"] < fixed["E_f_eV"]
    capped = vacancy_formation_energy(cell, tersoff, fmax_eV_A=1e-6, max_steps=1)
    assert not capped["converged"] and capped["steps"] <= 1


def test_plot_vacancy_bars(tmp_path):
    results = {
        "DFT": {"diamond": 3.6, "bc8": 2.1, "beta_sn": 1.0},
        "PF": {"diamond": 3.5, "bc8": 2.0},
        "PFD": {"diamond": 3.4, "bc8": 2.2, "beta_sn": 0.9},
    }
    out = plot_vacancy_bars(results, tmp_path / "vac.png", title="Si")
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(__import__("importlib").util.find_spec("gpaw") is None, reason="no gpaw")
def test_phonons_refuse_one_gpaw_object_that_keeps_its_symmetry(monkeypatch):
    from gpaw import GPAW

    from pfd_ase.analysis import phonons

    def no_calculation(*args):
        raise AssertionError("a force was computed before the check")

    monkeypatch.setattr(phonons, "_forces", no_calculation)
    pw = {"mode": {"name": "pw", "ecut": 200.0}, "txt": None}
    with pytest.raises(ValueError, match='symmetry="off"'):
        phonon_bands(bulk("Si"), GPAW(**pw), supercell=(2, 2, 2))
    for ok in ("off", {"point_group": False}):
        phonons._check_shared_calculator(GPAW(symmetry=ok, **pw))
    phonons._check_shared_calculator(lambda: GPAW(**pw))  # a factory: fresh each time
    with pytest.raises(AssertionError, match="before the check"):  # accepted: goes on to work
        phonon_bands(bulk("Si"), GPAW(symmetry="off", **pw), supercell=(2, 2, 2))


def test_vacancy_flags_mark_values_that_are_not_results():
    from pfd_ase.analysis.vacancy import vacancy_flags

    ok = {"E_f_eV": 3.2, "converged": True}
    assert vacancy_flags(ok) == [] and vacancy_flags(ok, ["diamond"], "diamond") == []
    assert vacancy_flags({"E_f_eV": -14.5, "converged": True}) == ["unphysical"]
    assert vacancy_flags({"E_f_eV": 12.0, "converged": False}) == ["unphysical", "not converged"]
    assert vacancy_flags({"E_f_eV": float("nan")}) == ["unphysical"]
    assert vacancy_flags(ok, ["diamond", "hex_diamond"], "bc8") == ["extrapolation"]


def test_report_prints_flagged_vacancy_energies_as_not_results(tmp_path):
    from pfd_ase.analysis.report import write_report

    summary = {
        "errors": {"teacher_vs_dft": {"force_rmse": 0.05, "energy_rmse": 0.002, "n_frames": 9}},
        "phonons": {"DFT": {"special_points": {"Gamma": [0.0, 0.0, 0.0, 15.1, 15.1, 15.1]}}},
        "vacancy_formation_eV": {"PF": {"diamond": 3.61, "bc8": -14.5}},
        "vacancy_flags": {"PF": {"diamond": [], "bc8": ["unphysical", "extrapolation"]}},
    }
    plot_vacancy_bars(
        summary["vacancy_formation_eV"], tmp_path / "vacancies.png", flagged={"PF": ["bc8"]}
    )
    text = write_report(tmp_path, summary, "Si").read_text()
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert "diamond 3.61 eV," in text and "Γ optical 15.10 THz" in text
    assert "bc8 -14.50 eV (not a result: unphysical, extrapolation)" in text
    assert "(0, 10) eV" in text and "![vacancies](vacancies.png)" in text


def test_report_prints_diffusion_coefficients_and_activation_energy(tmp_path):
    from pfd_ase.analysis.report import report_lines

    summary = {
        "diffusion": {
            "PFD_large": {
                "species": "Li",
                "n_atoms": 440,
                "D_cm2_s": {
                    "900": {"D": 1.2e-6, "err": 3e-7, "runs": 4, "window_ps": [1, 5]},
                    "1200": {"D": 8.0e-6, "err": None, "runs": 1, "window_ps": [1, 5]},
                    "1500": {
                        "D": 2.5e-4,
                        "err": None,
                        "runs": 1,
                        "window_ps": [0.01, 0.05],
                        "alpha": 1.62,
                        "msd_end_A2": 0.61,
                        "diffusive": False,
                    },
                },
                "arrhenius": {"Ea_eV": 0.301, "Ea_err_eV": 0.02, "D0_cm2_s": 6e-5},
                "excluded_runs": [{"walker": 3}],
            }
        }
    }
    (line,) = report_lines(summary)
    assert line.startswith("- Li diffusion, PFD large (440 atoms): D (cm²/s) 900 K 1.20e-06")
    assert "± 3.0e-07 (4 runs)" in line and "1200 K 8.00e-06 (1 runs)" in line
    assert "Ea 0.301 ± 0.020 eV" in line and "1 runs excluded" in line
    assert "1500 K 2.50e-04 (1 runs, not diffusive: MSD ∝ t^1.62, 0.61 Å² reached" in line
    assert "not an activation energy" not in line  # a summary from before the flag
    summary["diffusion"]["PFD_large"]["arrhenius"]["diffusive"] = False
    (line,) = report_lines(summary)
    assert "Ea 0.301 ± 0.020 eV, D0 6.00e-05 cm²/s (from D that are not diffusion" in line
    assert "not an activation energy of diffusion" in line


def test_compare_phonons_and_vacancies_reuse_steps(sw, tmp_path):
    from pfd_ase.analysis.validate import Subject, compare_phonons, compare_vacancies
    from pfd_ase.materials import silicon

    made, stored = [], {}

    def step(key, func, inputs):
        if stored.get(key, (None,))[0] != inputs:
            stored[key] = (inputs, func())
        return stored[key][1]

    def subject(trained_on=None):
        return Subject(lambda: made.append(1) or sw, {"model": "sw"}, trained_on)

    subjects = {"DFT": subject(), "PF": subject(["diamond"])}
    prim = silicon("diamond", primitive=True)
    kwargs = {"step": step, "plot": tmp_path / "ph.png"}
    bands = compare_phonons(prim, subjects, {"DFT": (3, 3, 3), "PF": (2, 2, 2)}, **kwargs)
    assert bands["DFT"]["supercell"] == [[3, 0, 0], [0, 3, 0], [0, 0, 3]]
    assert bands["PF"]["supercell"][0] == [2, 0, 0] and (tmp_path / "ph.png").exists()
    assert max(bands["DFT"]["special_points"]["Gamma"]) == pytest.approx(SW_GAMMA_OPTICAL, abs=0.1)
    assert stored["phonons_PF"][0] == {
        "model": "sw",
        "supercell": (2, 2, 2),
        "mesh": (20, 20, 20),
        "temperature_K": 300.0,
        "phonopy_params": None,
    }
    again = compare_phonons(prim, subjects, {"DFT": (3, 3, 3), "PF": (2, 2, 2)}, **kwargs)
    assert again == bands and len(made) == 2  # no calculator asked for again

    cells = vacancy_supercells(silicon_phases(["diamond", "bcc"]), quick=True)
    out = compare_vacancies(
        cells, subjects, silicon("diamond"), step=step, plot=tmp_path / "v.png", max_steps=20
    )
    assert list(out["vacancy_formation_eV"]["PF"]) == ["diamond", "bcc"]
    assert stored["vacancies_PF"][0] == {
        "model": "sw",
        "max_steps": 20,
        "stability_check": STABILITY_CHECK,
        "phases": ["diamond", "bcc"],
    }
    e_f = out["vacancy_formation_eV"]["DFT"]["diamond"]
    assert 0 < e_f < 10 and out["vacancy_details"]["DFT"]["diamond"]["reference"] == "mu"
    assert out["vacancy_flags"]["DFT"]["diamond"] == []
    assert "extrapolation" in out["vacancy_flags"]["PF"]["bcc"]
    assert "extrapolation" not in out["vacancy_flags"]["DFT"]["bcc"]  # the labeler: no check
    assert (tmp_path / "v.png").exists()


def test_vacancy_series_uses_one_chemical_potential(sw):
    from pfd_ase.analysis.vacancy import vacancy_series
    from pfd_ase.materials import silicon

    cells = {"diamond": silicon("diamond"), "fcc": silicon("fcc", 2)}
    series = vacancy_series(cells, sw, reference=silicon("diamond"), relax=False)
    diamond = silicon("diamond")
    diamond.calc = sw
    mu = diamond.get_potential_energy() / 8
    for phase, cell in cells.items():
        alone = vacancy_formation_energy(cell, sw, mu_eV=mu, relax=False)
        assert series[phase] == alone
    own = vacancy_series(cells, sw, relax=False)
    assert own["fcc"]["reference"] == "bulk"


def test_entropy_curve_and_plot(tmp_path):
    from pfd_ase.analysis.validate import entropy_curve, plot_entropy

    summary = {
        "steps": {
            "init.label": {"dataset_entropy": 1.0},
            "ft.stage1.000.label": {"dataset_entropy": 2.5},
            "ft.stage1.000.train": {},
            "ft.stage2.000.label": {"dataset_entropy": 3.0},
        }
    }
    curve = entropy_curve(summary)
    assert curve == [("ft.stage1.000", 2.5), ("ft.stage2.000", 3.0)]
    assert plot_entropy(curve, tmp_path / "e.png").exists()
    assert plot_entropy([], tmp_path / "none.png") is None


def test_phonon_labeler_settings():
    from pfd_ase.analysis.phonons import SHARED_LABELER_SETTINGS, phonon_labeler
    from pfd_ase.calculators import labeler_info

    calc = phonon_labeler("sw")
    assert labeler_info(calc)["name"] == "sw"
    assert SHARED_LABELER_SETTINGS["gpaw"] == {"symmetry": "off"}
    if __import__("importlib").util.find_spec("gpaw") is None:
        return
    from pfd_ase.analysis import phonons

    phonons._check_shared_calculator(
        phonon_labeler("gpaw", mode={"name": "pw", "ecut": 200}, txt=None)
    )
    kept = phonon_labeler("GPAW", symmetry={"point_group": True}, txt=None)
    with pytest.raises(ValueError, match='symmetry="off"'):
        phonons._check_shared_calculator(kept)  # the user's setting wins, and is refused


def test_stage_walls_sum_step_records_per_stage_in_run_order():
    from pfd_ase.analysis.validate import stage_walls

    walls = {
        "init.label": 10.0,
        "init.train": 2.5,
        "ft.stage1.000.md": 3.0,
        "ft.stage1.001.train": 4.04,
        "ft.stage2.000.label": 7.0,
        "distill.000.train": 5.0,
        "validation": 0.5,  # the workflow's own check counts as validation
        "validate.held_out": 1.0,
        "validate.test_label": 30.0,
    }
    summary = {"steps": {k: {"wall_s": v} for k, v in walls.items()}}
    summary["steps"]["validate.test_label"]["concurrent"] = True  # ran beside the others
    out = stage_walls(summary)
    assert list(out) == ["init", "ft.stage1", "ft.stage2", "distill", "validate", "concurrent"]
    assert out == {
        "init": 12.5,
        "ft.stage1": 7.0,
        "ft.stage2": 7.0,
        "distill": 5.0,
        "validate": 1.5,
        "concurrent": 30.0,
    }
    summary["steps"]["init.label"]["wall_s"] = None  # a step without a wall time counts 0
    assert stage_walls(summary)["init"] == 2.5


def test_report_shows_the_held_out_table_first_and_training_errors_as_such():
    from pfd_ase.analysis.report import report_lines

    def scores(force, stress):
        return {
            "n_frames": 2,
            "force_rmse_eV_A": force,
            "energy_rmse_meV_atom": 12.34,
            "energy_rmse_raw_meV_atom": 50.0,
            "stress_rmse_GPa": stress,
        }

    summary = {
        "errors": {"teacher_vs_dft": {"force_rmse": 0.05, "energy_rmse": 0.01, "n_frames": 9}},
        "test_set": {"n_frames": 4},
        "held_out": {
            "base": {**scores(0.3, None), "per_phase": {"fcc": scores(0.4, None)}},
            "PF": {**scores(0.1, 1.5), "per_phase": {"bcc": scores(0.2, 2.0)}},
        },
    }
    lines = report_lines(summary)
    assert lines[0].startswith("Held-out test set (4 frames")
    table = [line for line in lines if line.startswith("| ")]
    assert table[1] == "| base | all | 2 | 0.300 | 12.3 | 50.0 | – |"
    assert table[2] == "| base | fcc | 2 | 0.400 | 12.3 | 50.0 | – |"
    assert table[4] == "| PF | bcc | 2 | 0.200 | 12.3 | 50.0 | 2.00 |"
    assert lines[-1].startswith(
        "- **teacher vs dft** (the teacher's own training frames, not a test)"
    )
    assert report_lines({}) == []


def test_report_says_what_the_run_chose_and_what_each_stage_cost():
    from pfd_ase.analysis.report import report_lines

    summary = {
        "cells": {"diamond": 8, "diamond_vacancy": 15},
        "stage_wall_s": {"init": 84.5, "distill": 291.8, "validate": 37.6, "concurrent": 304.2},
        "references_wait_s": 12.0,
    }
    lines = report_lines(summary)
    assert lines[0] == "- cells (atoms per structure): diamond 8, diamond_vacancy 15"
    # the references overlap the stages: the total is the stages plus the wait, not + 304
    assert lines[1] == "- wall time per stage (s): init 84, distill 292, validate 38; total 426 s"
    assert "304 s, overlapping" in lines[2] and "waited 12 s" in lines[2]
    del summary["stage_wall_s"]["concurrent"], summary["references_wait_s"]
    assert report_lines(summary)[-1].endswith("; total 414 s")
