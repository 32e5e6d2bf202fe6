"""phonopy_params.yaml, every branch at Γ/X/L against a reference, and thermal properties."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pfd_ase.calculators.labelers import make_labeler
from pfd_ase.materials import silicon

phonopy = pytest.importorskip("phonopy")
yaml = pytest.importorskip("yaml")
pytest.importorskip("matscipy")

# Stillinger-Weber Si at a = 5.431 Å, phonopy 3×3×3 (notes/facts.md); Tersoff 16.07 THz
SW_GAMMA_OPTICAL = 17.83
TERSOFF_GAMMA_OPTICAL = 16.07
DULONG_PETIT_J_K_MOL = 3 * 8.314462618  # 24.94 J/K per mole of atoms

# SI constants for the independent harmonic sums
H_J_S, KB_J_K, R_J_K_MOL = 6.62607015e-34, 1.380649e-23, 8.314462618


@pytest.fixture(scope="module")
def sw():
    return make_labeler("sw")


@pytest.fixture(scope="module")
def prim():
    return silicon("diamond", primitive=True)


@pytest.fixture(scope="module")
def sw_phonons(prim, sw, tmp_path_factory):
    from pfd_ase.analysis.phonons import phonon_bands

    folder = tmp_path_factory.mktemp("sw") / "phonons" / "SW"
    return phonon_bands(prim, sw, (3, 3, 3), folder=folder)


def test_phonopy_params_saved_and_loaded_back(sw_phonons):
    from pathlib import Path

    path = Path(sw_phonons["phonopy_params"])
    assert path.name == "phonopy_params.yaml" and path.exists()
    content = yaml.safe_load(path.read_text())
    assert "forces" in content["displacements"][0]
    assert "force_constants" not in content  # phonopy's tools rebuild them from the forces
    loaded = phonopy.load(path)
    forces = np.asarray(loaded.forces)
    assert forces.shape == (sw_phonons["n_displacements"], 54, 3)  # 3×3×3 × 2 atoms
    assert np.abs(forces).max() > 0.01  # real forces of the displaced supercell
    qpoints = sw_phonons["special_qpoints"]
    loaded.run_qpoints([qpoints["Gamma"], qpoints["X"], qpoints["L"]])
    freqs = np.sort(np.asarray(loaded.qpoints.frequencies), axis=1)
    for row, point in zip(freqs, ("Gamma", "X", "L"), strict=True):
        np.testing.assert_allclose(row, sw_phonons["special_points"][point], atol=1e-5)


def test_sw_gamma_optical_and_commensurate_points(sw_phonons):
    gamma = sw_phonons["special_points"]["Gamma"]
    np.testing.assert_allclose(gamma[:3], 0.0, atol=1e-3)
    np.testing.assert_allclose(gamma[3:], SW_GAMMA_OPTICAL, atol=0.05)
    # a 3×3×3 supercell holds the Γ wave, not X's or L's (half a reciprocal vector)
    assert sw_phonons["commensurate"] == {"Gamma": True, "X": False, "L": False}


@pytest.mark.parametrize(
    "matrix",
    [np.diag([2, 2, 2]), np.diag([3, 3, 3]), np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]])],
)
def test_is_commensurate_agrees_with_phonopy(matrix):
    from phonopy.harmonic.dynmat_to_fc import get_commensurate_points

    from pfd_ase.analysis.phonons import is_commensurate

    commensurate = get_commensurate_points(matrix)
    for q in ([0, 0, 0], [0.5, 0.0, 0.5], [0.5, 0.5, 0.5], [0.375, 0.375, 0.75]):
        diff = commensurate - np.array(q)
        expected = bool(np.any(np.all(np.abs(diff - np.round(diff)) < 1e-8, axis=1)))
        assert is_commensurate(matrix, q) == expected, (matrix.tolist(), q)


def _harmonic_sums(loaded, mesh, temperature_K, n_atoms):
    """C_v (J/K/mol atoms) and F_vib (kJ/mol atoms) summed here from phonopy's mesh."""
    loaded.run_mesh(mesh, is_gamma_center=True)
    freqs = np.asarray(loaded.mesh.frequencies) * 1e12  # Hz
    weights = np.asarray(loaded.mesh.weights, float)
    keep = freqs > 1e9  # the three acoustic modes at Γ (0 THz) carry no heat capacity here
    x = np.where(keep, H_J_S * freqs / (KB_J_K * temperature_K), 1.0)
    cv = np.where(keep, x**2 * np.exp(x) / np.expm1(x) ** 2, 0.0)
    free = np.where(keep, x / 2 + np.log(-np.expm1(-x)), 0.0)
    norm = weights.sum() * n_atoms
    cv_mol = R_J_K_MOL * (weights[:, None] * cv).sum() / norm
    f_mol = R_J_K_MOL * temperature_K * (weights[:, None] * free).sum() / norm / 1000
    return cv_mol, f_mol


def test_sw_heat_capacity_and_free_energy_at_300K(sw_phonons):
    thermal = sw_phonons["thermal"]
    assert thermal["temperature_K"] == 300.0 and thermal["mesh"] == [20, 20, 20]
    cv = thermal["cv_J_K_mol_atom"]
    assert 0 < cv < DULONG_PETIT_J_K_MOL  # per mole of atoms; per 2-atom cell it would be 37
    assert thermal["imaginary_fraction"] == 0.0 and thermal["min_frequency_THz"] > -1e-3
    # the same harmonic sums done here: units and per-atom normalisation
    loaded = phonopy.load(sw_phonons["phonopy_params"])
    cv_here, f_here = _harmonic_sums(loaded, [20, 20, 20], 300.0, 2)
    assert cv == pytest.approx(cv_here, rel=1e-5)  # constants: CODATA vintages
    assert thermal["free_energy_kJ_mol_atom"] == pytest.approx(f_here, rel=1e-5)
    kj_per_mol = thermal["free_energy_kJ_mol_atom"]
    assert thermal["free_energy_eV_atom"] == pytest.approx(kj_per_mol / 96.48533212, rel=1e-9)


def test_softer_tersoff_holds_more_heat(prim, sw_phonons):
    from pfd_ase.analysis.phonons import phonon_bands

    tersoff = phonon_bands(prim, make_labeler("tersoff"), (3, 3, 3), npoints=2)
    assert max(tersoff["special_points"]["Gamma"]) == pytest.approx(TERSOFF_GAMMA_OPTICAL, abs=0.05)
    assert tersoff["phonopy_params"] is None  # no folder, no file
    # lower frequencies: larger C_v and entropy, lower free energy
    t, s = tersoff["thermal"], sw_phonons["thermal"]
    assert s["cv_J_K_mol_atom"] < t["cv_J_K_mol_atom"] < DULONG_PETIT_J_K_MOL
    assert t["entropy_J_K_mol_atom"] > s["entropy_J_K_mol_atom"]
    assert t["free_energy_kJ_mol_atom"] < s["free_energy_kJ_mol_atom"]


def test_compare_phonons_max_dev_and_files(prim, sw, tmp_path):
    from pfd_ase.analysis.phonons import PhononComparison
    from pfd_ase.analysis.validate import Subject, compare_phonons

    tersoff = make_labeler("tersoff")
    subjects = {
        "DFT": Subject(lambda: sw, {"model": "sw"}),
        "PF": Subject(lambda: sw, {"model": "sw"}),
        "PFD": Subject(lambda: tersoff, {"model": "tersoff"}),
    }
    folder = tmp_path / "validation" / "phonons"
    sizes = {"DFT": (3, 3, 3), "PF": (3, 3, 3), "PFD": (2, 2, 2)}
    bands = compare_phonons(prim, subjects, sizes, folder=folder, mesh=(8, 8, 8))
    assert isinstance(bands, PhononComparison) and set(bands) == {"DFT", "PF", "PFD"}
    summary = json.loads(json.dumps(bands.summary))  # JSON-safe
    assert summary["phonon_reference"] == "DFT"
    for name in subjects:
        path = folder / name / "phonopy_params.yaml"
        assert path.exists() and summary["phonopy_params"][name] == str(path)
        assert bands[name]["phonopy_params"] == str(path)
    # a model compared with itself: zero on every branch
    assert set(summary["phonon_max_dev_THz"]) == {"PF", "PFD"}
    assert summary["phonon_max_dev_THz"]["PF"] < 1e-6
    assert bands.phonon_max_dev_THz == summary["phonon_max_dev_THz"]
    for point in ("Gamma", "X", "L"):
        assert len(summary["phonon_deviation_THz"]["PF"][point]) == 6
    # Tersoff vs SW: the largest gap is the Γ optical one, 16.07 - 17.83
    dev = summary["phonon_deviation_THz"]["PFD"]
    every = [d for values in dev.values() for d in values]
    assert summary["phonon_max_dev_THz"]["PFD"] == pytest.approx(max(abs(d) for d in every))
    np.testing.assert_allclose(
        dev["Gamma"][3:], TERSOFF_GAMMA_OPTICAL - SW_GAMMA_OPTICAL, atol=0.07
    )
    assert summary["phonon_max_dev_THz"]["PFD"] == pytest.approx(1.76, abs=0.07)
    # different supercells are said so, with exact (commensurate) and interpolated points
    assert summary["phonon_same_supercell"] == {"PF": True, "PFD": False}
    assert summary["phonon_branches"]["PFD"]["commensurate"] == dict.fromkeys(
        ("Gamma", "X", "L"), True
    )
    assert summary["phonon_branches"]["DFT"]["commensurate"]["X"] is False
    assert set(summary["phonon_thermal"]) == {"DFT", "PF", "PFD"}
    assert summary["phonon_thermal"]["PF"]["mesh"] == [8, 8, 8]


def test_branches_compared_in_sorted_order():
    from pfd_ase.analysis.phonons import phonon_comparison

    def bands(gamma, x, supercell=3):
        return {
            "special_points": {"Gamma": gamma, "X": x},
            "special_qpoints": {"Gamma": [0, 0, 0], "X": [0.5, 0, 0.5]},
            "supercell": np.diag([supercell] * 3).tolist(),
        }

    ref = bands([0, 0, 0, 15, 15, 15], [4, 4, 10, 10, 12, 12])
    model = bands([15.5, 0, 15.5, 0, 14.0, 0], [12, 4, 10, 10, 4, 13], supercell=2)
    out = phonon_comparison({"ref": ref, "m": model}, reference="ref")
    np.testing.assert_allclose(out["phonon_deviation_THz"]["m"]["Gamma"], [0, 0, 0, -1, 0.5, 0.5])
    np.testing.assert_allclose(out["phonon_deviation_THz"]["m"]["X"], [0, 0, 0, 0, 0, 1])
    assert out["phonon_max_dev_THz"] == {"m": 1.0}
    assert out["phonon_same_supercell"] == {"m": False}
    assert out["phonon_branches"]["m"]["frequencies_THz"]["Gamma"] == [0, 0, 0, 14, 15.5, 15.5]
    assert phonon_comparison({"m": model})["phonon_max_dev_THz"] == {}  # no reference
    with pytest.raises(ValueError, match="branches"):
        phonon_comparison({"ref": ref, "m": bands([0, 0, 0], [1, 2, 3])}, reference="ref")


def test_report_tables(prim, sw, tmp_path):
    from pfd_ase.analysis.report import write_report
    from pfd_ase.analysis.validate import Subject, compare_phonons

    subjects = {"DFT": Subject(lambda: sw, {}), "PF": Subject(lambda: sw, {})}
    bands = compare_phonons(prim, subjects, {"DFT": (3, 3, 3), "PF": (2, 2, 2)}, mesh=(6, 6, 6))
    summary = {
        "phonons": {k: {"special_points": v["special_points"]} for k, v in bands.items()},
        **bands.summary,
    }
    text = write_report(tmp_path, summary, "Si").read_text()
    assert "| DFT | 3×3×3 | Γ (exact) | 0.00 0.00 0.00 17.83 17.83 17.83 | – |" in text
    assert "| PF | 2×2×2 | X (exact) |" in text and "| DFT | 3×3×3 | X (interpolated) |" in text
    assert "+0.00 +0.00 +0.00 +0.00 +0.00 +0.00" in text
    assert "- phonons PF: max |Δ| vs DFT 0.00 THz at Γ, X, L (supercell differs from DFT's)" in text
    cv = bands.summary["phonon_thermal"]["DFT"]["cv_J_K_mol_atom"]
    assert f"| DFT | {cv:.2f} |" in text and "6×6×6 Γ-centred mesh, per mole of atoms" in text
