"""Diffusion analysis: MSD, D, Arrhenius and conductivity against known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.units import kB

from pfd_ase.analysis import diffusion as dif

BOX = 12.0


def random_walk(
    d_a2_ps: float,
    n_atoms: int,
    n_frames: int,
    dt_fs: float,
    seed: int,
    species: str = "Li",
    box: float = BOX,
) -> list[Atoms]:
    """Gaussian 3-D random walk with diffusion coefficient D, wrapped into a cubic box;
    plus two immobile O atoms (the framework)."""
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(2 * d_a2_ps * dt_fs / 1000)  # per Cartesian component and step
    steps = rng.normal(0, sigma, (n_frames - 1, n_atoms, 3))
    start = rng.uniform(0, box, (n_atoms, 3))
    path = start + np.concatenate([np.zeros((1, n_atoms, 3)), np.cumsum(steps, axis=0)])
    frames = []
    for r in path:
        atoms = Atoms(
            species * n_atoms + "O2",
            positions=np.vstack([r, [[1, 1, 1], [6, 6, 6]]]),
            cell=[box] * 3,
            pbc=True,
        )
        atoms.wrap()
        frames.append(atoms)
    return frames


def brute_msd(disp: np.ndarray) -> np.ndarray:
    n = len(disp)
    return np.array([np.mean(np.sum((disp[m:] - disp[: n - m]) ** 2, axis=2)) for m in range(n)])


def test_fft_msd_equals_the_direct_average():
    rng = np.random.default_rng(3)
    disp = np.cumsum(rng.normal(size=(50, 7, 3)), axis=0)
    assert np.allclose(dif._msd_all_origins(disp), brute_msd(disp), rtol=1e-10, atol=1e-10)


def test_unwrapping_across_boundaries_and_a_changing_cell():
    # one atom moving 0.06 of the cell along x per frame, wrapped every frame, while the
    # cell grows (NPT: positions scale with the cell, the fractional motion is the motion)
    frames, lengths = [], []
    for k in range(40):
        length = 5.0 * (1 + 0.001 * k)
        s = [(0.1 + 0.06 * k) % 1.0, 0.2, 0.2]
        frames.append(Atoms("H", scaled_positions=[s], cell=[length] * 3, pbc=True))
        lengths.append(length)
    disp = dif.unwrapped_displacements(frames, remove_drift=False)
    # each step is 0.06 of the later frame's cell
    assert disp[-1, 0, 0] == pytest.approx(0.06 * sum(lengths[1:]), rel=1e-12)
    assert disp[-1, 0, 0] > 2 * lengths[0]  # crossed the boundary twice
    assert np.allclose(disp[:, 0, 1:], 0)
    # without periodicity the jumps back are motion: no unwrapping
    for a in frames:
        a.pbc = False
    assert abs(dif.unwrapped_displacements(frames, remove_drift=False)[-1, 0, 0]) < lengths[0]


def test_drift_of_the_whole_cell_is_not_diffusion():
    frames = random_walk(0.0, 4, 30, 1.0, 0)  # D = 0: nothing moves ...
    for k, a in enumerate(frames):  # ... but the whole cell drifts
        a.positions += [0.2 * k, 0.0, 0.1 * k]
        a.wrap()
    still = dif.mean_squared_displacement(frames, "Li", 1.0)
    assert np.allclose(still.msd_A2, 0, atol=1e-20)
    moving = dif.mean_squared_displacement(frames, "Li", 1.0, remove_drift=False)
    assert moving.msd_A2[1] == pytest.approx(0.05)


def test_random_walk_diffusivity_recovered_within_5_percent():
    d_true = 0.5  # Å²/ps
    frames = random_walk(d_true, 200, 1000, 10.0, seed=1)
    msd = dif.mean_squared_displacement(frames, "Li", 10.0, remove_drift=False)
    assert msd.n_atoms == 200 and msd.time_ps[1] == pytest.approx(0.01)
    fit = dif.fit_diffusivity(msd, runs=frames, interval_fs=10.0)
    assert fit.D_A2_ps == pytest.approx(d_true, rel=0.05)
    assert fit.D_cm2_s == pytest.approx(d_true * 1e-4, rel=0.05)
    assert fit.error_from == "blocks" and len(fit.samples_cm2_s) == 4
    assert 0 < fit.D_err_cm2_s < 0.1 * fit.D_cm2_s
    assert fit.window_ps == pytest.approx((0.1 * msd.time_ps[-1], 0.5 * msd.time_ps[-1]))


def test_ballistic_and_caged_windows_are_not_called_diffusive():
    """MSD ∝ t^α: α = 1 and a few Å² for a random walk (diffusive); α = 2 for atoms flying
    at constant velocity and α ≈ 0 with under 1 Å² for atoms rattling on their sites."""
    walk = random_walk(0.5, 200, 1000, 10.0, seed=1)
    fit = dif.fit_diffusivity(dif.mean_squared_displacement(walk, "Li", 10.0))
    assert fit.alpha == pytest.approx(1.0, abs=0.1) and fit.msd_end_A2 > 4 and fit.diffusive

    rng = np.random.default_rng(0)
    start = rng.uniform(0, BOX, (50, 3))
    velocity = rng.normal(0, 0.05, (50, 3))  # Å/fs
    noise = rng.normal(0, 0.3, (200, 50, 3))
    for kind, path in (
        ("ballistic", [start + velocity * 10.0 * k for k in range(200)]),
        ("caged", [start + noise[k] for k in range(200)]),
    ):
        frames = [Atoms("Li50", positions=r, cell=[BOX] * 3, pbc=True) for r in path]
        for atoms in frames:
            atoms.wrap()
        fit = dif.fit_diffusivity(dif.mean_squared_displacement(frames, "Li", 10.0))
        assert not fit.diffusive, kind
        if kind == "ballistic":
            assert fit.alpha == pytest.approx(2.0, abs=0.05)
        else:
            assert fit.msd_end_A2 < 1.0 and abs(fit.alpha) < 0.2


def test_independent_runs_averaged_with_an_error_bar():
    d_true = 0.2
    runs = [random_walk(d_true, 30, 300, 10.0, seed=s) for s in range(4)]
    msd = dif.mean_squared_displacement(runs, "Li", 10.0, temperature_K=800)
    assert msd.n_runs == 4 and msd.per_run.shape == (4, len(msd.time_ps))
    assert np.allclose(msd.msd_A2, msd.per_run.mean(axis=0))
    fit = dif.fit_diffusivity(msd)
    assert fit.error_from == "runs" and fit.temperature_K == 800
    assert abs(fit.D_A2_ps - d_true) < 4 * fit.D_err_cm2_s * 1e4
    single = dif.fit_diffusivity(dif.mean_squared_displacement(runs[0], "Li", 10.0))
    assert np.isnan(single.D_err_cm2_s)  # one run, no blocks given: no error bar


def test_msd_errors_on_bad_input():
    frames = random_walk(0.1, 3, 10, 1.0, 0)
    with pytest.raises(ValueError, match="no Na atoms"):
        dif.mean_squared_displacement(frames, "Na", 1.0)
    with pytest.raises(ValueError, match="same number of frames"):
        dif.mean_squared_displacement([frames, frames[:5]], "Li", 1.0)
    with pytest.raises(ValueError, match="interval_fs"):
        dif.mean_squared_displacement(frames, "Li", 0.0)
    with pytest.raises(ValueError, match="other atoms"):
        dif.unwrapped_displacements([frames[0], frames[1][:-1]])
    with pytest.raises(ValueError, match="window"):
        dif.fit_diffusivity(dif.mean_squared_displacement(frames, "Li", 1.0), window=(0.5, 0.2))


def test_arrhenius_recovers_a_known_activation_energy():
    pytest.importorskip("pymatgen.analysis.diffusion")
    ea, d0 = 0.35, 2e-3
    temps = np.array([600.0, 800.0, 1000.0, 1200.0])
    exact = d0 * np.exp(-ea / (kB * temps))
    fit = dif.arrhenius(temps, exact)
    assert fit.Ea_eV == pytest.approx(ea, rel=1e-6)
    assert fit.D0_cm2_s == pytest.approx(d0, rel=1e-6)
    assert fit.D_at(300) == pytest.approx(d0 * np.exp(-ea / (kB * 300)), rel=1e-6)
    rng = np.random.default_rng(0)
    noisy = exact * np.exp(rng.normal(0, 0.05, 4))
    fit = dif.arrhenius(temps, noisy)
    assert abs(fit.Ea_eV - ea) < 3 * fit.Ea_err_eV and fit.Ea_err_eV < 0.05
    weighted = dif.arrhenius(temps, noisy, 0.05 * noisy)
    assert abs(weighted.Ea_eV - ea) < 3 * weighted.Ea_err_eV
    # equal relative errors weigh ln D equally: the unweighted slope
    assert weighted.Ea_eV == pytest.approx(fit.Ea_eV, rel=1e-5)  # pymatgen: its own kB
    with pytest.raises(ValueError, match="distinct temperatures"):
        dif.arrhenius([800.0, 800.0], [1e-5, 2e-5])
    with pytest.raises(ValueError, match="positive"):
        dif.arrhenius([800.0, 900.0], [1e-5, -2e-5])


def test_nernst_einstein_conductivity_by_hand():
    pytest.importorskip("pymatgen.analysis.diffusion")
    from ase.build import bulk

    atoms = bulk("LiF", "rocksalt", a=4.03, cubic=True)  # 4 Li+ in 65.45 Å³
    d, t = 1e-6, 600.0
    sigma = dif.nernst_einstein_conductivity(atoms, "Li", d, t)
    n = 4 / (atoms.get_volume() * 1e-30)  # 1/m³
    e, k_b = 1.602176634e-19, 1.380649e-23
    expected_s_per_m = n * e**2 * (d * 1e-4) / (k_b * t)
    assert sigma == pytest.approx(expected_s_per_m * 10, rel=1e-3)  # mS/cm
    with pytest.raises(ValueError, match="no Na"):
        dif.nernst_einstein_conductivity(atoms, "Na", d, t)


def test_plots(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("pymatgen.analysis.diffusion")
    msds, fits = [], []
    for k, temp in enumerate((600.0, 900.0)):
        runs = [random_walk(0.1 * (k + 1), 10, 100, 10.0, seed=s) for s in range(2)]
        msds.append(dif.mean_squared_displacement(runs, "Li", 10.0, temperature_K=temp))
        fits.append(dif.fit_diffusivity(msds[-1]))
    assert dif.plot_msd(msds, tmp_path / "msd.png", fits).stat().st_size > 1000
    fit = dif.arrhenius([600.0, 900.0], fits)
    path = dif.plot_arrhenius([fit], ["PFD"], tmp_path / "arrhenius.png")
    assert path.stat().st_size > 1000


def test_diffusion_study_of_liquid_copper_with_emt(tmp_path):
    """EMT Cu, 32 atoms: molten at 2000-3000 K (D grows with T, an Arrhenius fit with a
    positive Ea), a solid at 300 K (D orders of magnitude smaller); rerun = the same."""
    pytest.importorskip("pymatgen.analysis.diffusion")
    import json

    from ase.build import bulk

    cell = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    kwargs = dict(n_runs=2, steps=300, timestep_fs=2.0, sample_every=5, seed=1)
    study = dif.diffusion_study("emt", cell, "Cu", [2000, 3000], tmp_path / "hot", **kwargs)
    assert study.excluded == []
    d = {t: f.D_cm2_s for t, f in study.fits.items()}
    assert d[3000] > d[2000] > 1e-5  # liquid metals: ~1e-4 cm²/s
    assert study.msd[2000].n_runs == 2 and len(study.msd[2000].time_ps) == 31
    assert study.arrhenius is not None and study.arrhenius.Ea_eV > 0
    assert {Path(p).name for p in study.plots} == {"msd.png", "arrhenius.png"}
    summary = json.loads(json.dumps(study.summary()))
    assert summary["D_cm2_s"]["3000"]["runs"] == 2 and "Ea_eV" in summary["arrhenius"]
    # the fit is a diffusion Ea only if every D in it is a diffusion coefficient
    every = all(v["diffusive"] for v in summary["D_cm2_s"].values())
    assert summary["arrhenius"]["diffusive"] is every
    again = dif.diffusion_study("emt", cell, "Cu", [2000, 3000], tmp_path / "hot", **kwargs)
    assert again.fits[3000].D_cm2_s == d[3000]  # finished runs are reused
    cold_kwargs = dict(kwargs, steps=600, equilibration_steps=200)
    cold = dif.diffusion_study("emt", cell, "Cu", [300], tmp_path / "cold", **cold_kwargs)
    assert len(cold.msd[300].time_ps) == 41  # 400 steps kept, a frame every 5
    assert abs(cold.fits[300].D_cm2_s) < 0.05 * d[2000]
    assert cold.arrhenius is None  # one temperature
    with pytest.raises(ValueError, match="no Li"):
        dif.diffusion_study("emt", cell, "Li", [300], tmp_path / "x")
    with pytest.raises(ValueError, match="multiple of sample_every"):
        dif.diffusion_study("emt", cell, "Cu", [300], tmp_path / "x", equilibration_steps=7)
