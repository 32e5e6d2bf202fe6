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
