"""NVE exploration (Velocity Verlet): energy and momentum conserved, settings checked."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk

from pfd_ase._io import read_json
from pfd_ase.explore import THERMOSTATS, ExploreTask, explore, walker_dir


def cu() -> Atoms:
    return bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))  # 32 atoms


def total_energies(frames: list[Atoms]) -> np.ndarray:
    """Potential + kinetic energy (eV) of sampled frames: 3 N degrees of freedom, no
    constraints, so E_kin = 3/2 N k_B T of the frame's kinetic temperature."""
    return np.array(
        [
            f.info["pfd_model_energy"] + 1.5 * len(f) * units.kB * f.info["pfd_md_temperature_K"]
            for f in frames
        ]
    )


def run(tmp_path, thermostat: str, **kwargs):
    settings = dict(temperatures_K=600, steps=200, timestep_fs=1.0, sample_every=5, seed=3)
    settings.update(kwargs)
    return explore(
        cu(), "emt", tmp_path / thermostat, thermostat=thermostat, progress=False, **settings
    )


def test_nve_conserves_energy_and_momentum_while_a_thermostat_does_not(tmp_path):
    nve = run(tmp_path, "nve", include_initial=True)
    (record,) = nve.walkers
    assert record["status"] == "finished" and record["ensemble"] == "nve"
    frames = nve.frames
    assert [f.info["pfd_ensemble"] for f in frames] == ["nve"] * 41
    # started from Maxwell-Boltzmann momenta at 600 K: the crystal shares the kinetic energy
    # with the potential energy, so the kinetic temperature falls to about half
    temps = np.array([f.info["pfd_md_temperature_K"] for f in frames])
    assert 350 < temps[0] < 850 and 150 < temps[10:].mean() < 450
    energy = total_energies(frames) / len(frames[0])
    potential = np.array([f.info["pfd_model_energy"] for f in frames]) / len(frames[0])
    drift = np.abs(energy - energy[0]).max()
    assert np.ptp(potential) > 0.02  # 20+ meV/atom exchanged between kinetic and potential
    assert drift < 2e-4  # total energy conserved to < 0.2 meV/atom over 200 fs

    # total momentum zero and conserved: the centre of mass (positions are unwrapped) stays
    masses = frames[0].get_masses()
    com = np.array([masses @ f.positions / masses.sum() for f in frames])
    assert np.abs(com - com[0]).max() < 1e-8

    # a thermostat (Bussi, started the same way) changes the total energy much more
    bussi = run(tmp_path, "bussi", tdamp_fs=20.0, include_initial=True)
    assert bussi.walkers[0]["ensemble"] == "nvt-bussi"
    nvt = total_energies(bussi.frames) / len(frames[0])
    assert np.abs(nvt - nvt[0]).max() > 100 * drift


def test_nve_halving_the_time_step_shrinks_the_energy_error(tmp_path):
    """Velocity Verlet is second order: the energy fluctuation scales as dt^2."""
    fluct = []
    for dt in (4.0, 2.0):
        result = run(
            tmp_path / f"dt{dt}", "nve", timestep_fs=dt, steps=int(400 / dt), sample_every=1
        )
        energy = total_energies(result.frames)
        fluct.append(np.ptp(energy))
    assert 2.5 < fluct[0] / fluct[1] < 6.0


def test_nve_is_seeded_and_keyed_apart_from_nvt(tmp_path):
    a = run(tmp_path / "a", "nve", steps=20)
    b = run(tmp_path / "b", "nve", steps=20)
    c = run(tmp_path / "c", "nve", steps=20, seed=4)
    assert all(
        np.array_equal(x.positions, y.positions) for x, y in zip(a.frames, b.frames, strict=True)
    )
    assert not np.allclose(a.frames[-1].positions, c.frames[-1].positions)
    langevin = run(tmp_path / "a", "langevin", steps=20)
    key_nve = read_json(walker_dir(tmp_path / "a" / "nve", 0) / "walker.json")["key"]
    key_nvt = read_json(walker_dir(tmp_path / "a" / "langevin", 0) / "walker.json")["key"]
    assert key_nve != key_nvt and langevin.walkers[0]["ensemble"] == "nvt-langevin"


def test_nve_names_and_grid_with_npt_walkers():
    assert "nve" in THERMOSTATS
    for name in ("nve", "NVE", "none", "velocity_verlet", "Verlet"):
        assert ExploreTask(300, thermostat=name).thermostat == "nve"
    task = ExploreTask(300, pressures_GPa=[None, 1.0], thermostat="nve")
    assert [task.ensemble(p) for p in task.pressures_GPa] == ["nve", "npt-mtk"]


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"thermostat": "nvee"}, "unknown thermostat 'nvee'"),
        ({"thermostat": None}, "unknown thermostat None"),
        ({"thermostat": "nve", "timestep_fs": 0.0}, "timestep_fs must be positive"),
        ({"thermostat": "nve", "temperatures_K": -5}, "temperatures_K must be positive"),
        ({"thermostat": "nve", "steps": 0}, "steps must be a positive integer"),
    ],
)
def test_bad_nve_settings_raise_before_any_md(tmp_path, settings, match):
    settings = {"temperatures_K": 300, "steps": 10, "sample_every": 5, **settings}
    with pytest.raises(ValueError, match=match):
        explore(cu(), "emt", tmp_path, progress=False, **settings)
    assert not tmp_path.joinpath("walker.0000").exists()
