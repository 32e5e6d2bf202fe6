"""Phase data (pfd_ase.materials) and the one seeded perturbation (pfd_ase.structures.perturb)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from pfd_ase.materials import (
    SILICON_PHASES,
    SILICON_STRUCTURES,
    silicon,
    silicon_phases,
    supercell,
)
from pfd_ase.structures import perturb, repeated_to

SPACEGROUPS = {
    "diamond": 227,
    "hex_diamond": 194,
    "fcc": 225,
    "bcc": 229,
    "hcp": 194,
    "beta_sn": 141,
    "bc8": 206,
}
ATOMS_PER_CELL = {
    "diamond": 8,
    "hex_diamond": 4,
    "fcc": 4,
    "bcc": 2,
    "hcp": 2,
    "beta_sn": 4,
    "bc8": 16,
    "diamond_vacancy": 7,
}


def _spacegroup(atoms) -> int:
    spglib = pytest.importorskip("spglib")
    cell = (np.array(atoms.cell), atoms.get_scaled_positions(), atoms.numbers)
    return spglib.get_symmetry_dataset(cell, symprec=1e-3).number


@pytest.mark.parametrize("name", SILICON_PHASES)
@pytest.mark.parametrize("size", [1, (2, 1, 3)])
def test_silicon_phases_by_name_and_size(name, size):
    atoms = silicon(name, size)
    assert _spacegroup(atoms) == SPACEGROUPS[name]
    assert len(atoms) == ATOMS_PER_CELL[name] * int(np.prod(np.broadcast_to(size, 3)))
    assert atoms.pbc.all() and atoms.calc is None and set(atoms.symbols) == {"Si"}


def test_diamond_vacancy_and_primitive_cells():
    assert set(SILICON_STRUCTURES) == {*SPACEGROUPS, "diamond_vacancy"}
    assert len(silicon("diamond_vacancy")) == 7 and len(silicon("diamond_vacancy", 2)) == 63
    vac = silicon("diamond_vacancy", 2)
    np.testing.assert_allclose(vac.cell.array, silicon("diamond", 2).cell.array)
    assert _spacegroup(vac) != 227  # the vacancy breaks the diamond symmetry
    for name, n in (("diamond", 2), ("fcc", 1), ("bcc", 1)):
        prim = silicon(name, primitive=True)
        assert len(prim) == n and _spacegroup(prim) == SPACEGROUPS[name]
        per_atom = prim.get_volume() / len(prim)
        assert per_atom == pytest.approx(silicon(name).get_volume() / ATOMS_PER_CELL[name])
    with pytest.raises(ValueError, match="primitive"):
        silicon("bc8", primitive=True)
    with pytest.raises(ValueError, match="unknown Si structure"):
        silicon("wurtzite")
    with pytest.raises(ValueError, match="unknown Si phases"):
        silicon_phases(["diamond", "clathrate"])


def test_supercell_sizes_and_matrices():
    cube = silicon("diamond")
    assert len(supercell(cube, 2)) == 64 and len(supercell(cube, (1, 1, 2))) == 16
    bcc_shaped = supercell(cube, [[-1, 1, 1], [1, -1, 1], [1, 1, -1]])
    assert len(bcc_shaped) == 32 and _spacegroup(bcc_shaped) == 227
    with pytest.raises(ValueError):
        supercell(cube, (1, 0, 1))
    with pytest.raises(ValueError):
        supercell(cube, (1, 2))
    assert len(silicon_phases(["bc8", "fcc"])) == 2


@pytest.mark.parametrize(
    ("name", "min_atoms", "count"),
    [("diamond", 32, 32), ("diamond", 64, 64), ("bcc", 32, 36), ("hcp", 32, 36), ("bc8", 16, 16)],
)
def test_repeated_to_reaches_min_atoms_in_a_compact_cell(name, min_atoms, count):
    atoms = silicon(name)
    out = repeated_to(atoms, min_atoms)
    assert len(out) == count >= min_atoms
    assert out.get_chemical_formula() == f"Si{count}"
    heights = 1.0 / np.linalg.norm(np.linalg.inv(out.cell.array), axis=0)
    # grown towards a cube: no height under half the largest one (a 1x1xN column would fail)
    assert heights.min() >= 0.5 * heights.max() - 1e-9
    # a supercell of the same crystal: same volume and energy per atom (Stillinger-Weber)
    from pfd_ase.calculators.labelers import make_labeler

    out.calc, atoms.calc = make_labeler("sw"), make_labeler("sw")
    assert out.get_volume() / len(out) == pytest.approx(atoms.get_volume() / len(atoms))
    assert out.get_potential_energy() / len(out) == pytest.approx(
        atoms.get_potential_energy() / len(atoms), abs=1e-9
    )
    assert len(atoms) == len(silicon(name))  # input untouched


def test_repeated_to_repeats_only_periodic_axes_and_rejects_bad_counts():
    slab = silicon("diamond")
    slab.pbc = (True, True, False)
    out = repeated_to(slab, 40)
    assert len(out) == 48 and np.allclose(out.cell[2], slab.cell[2])  # 3x2x1
    assert len(repeated_to(silicon("diamond"), 1)) == 8
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match="min_atoms"):
            repeated_to(slab, bad)


def test_perturb_is_seeded_and_deterministic():
    atoms = silicon("diamond")
    before = atoms.copy()
    a = perturb(atoms, 3, np.random.default_rng(7), cell_strain=0.03, displacement_A=0.05)
    b = perturb(atoms, 3, np.random.default_rng(7), cell_strain=0.03, displacement_A=0.05)
    c = perturb(atoms, 3, np.random.default_rng(8), cell_strain=0.03, displacement_A=0.05)
    assert atoms == before
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x.positions, y.positions)
        np.testing.assert_array_equal(x.cell.array, y.cell.array)
        assert not np.allclose(x.positions, z.positions)
    assert len({tuple(x.positions.ravel()) for x in a}) == 3  # the copies differ
    # draw order, per copy: the 3x3 uniform strain, then the Nx3 displacements
    rng = np.random.default_rng(7)
    for copy in a:
        eps = rng.uniform(-0.03, 0.03, (3, 3))
        strained = atoms.copy()
        strained.set_cell(atoms.cell.array @ (np.eye(3) + (eps + eps.T) / 2), scale_atoms=True)
        np.testing.assert_array_equal(copy.cell.array, strained.cell.array)
        displaced = strained.positions + rng.normal(0.0, 0.05, atoms.positions.shape)
        np.testing.assert_array_equal(copy.positions, displaced)
    strain = np.linalg.solve(atoms.cell.array, a[0].cell.array) - np.eye(3)
    assert np.abs(strain).max() <= 0.03 and np.allclose(strain, strain.T)


def test_perturb_strains_only_periodic_cells():
    cluster = bulk("Si", "diamond", a=5.431, cubic=True)
    cluster.pbc = False
    (moved,) = perturb(cluster, 1, np.random.default_rng(0), 0.03, 0.1)
    np.testing.assert_array_equal(moved.cell.array, cluster.cell.array)
    shift = moved.positions - cluster.positions
    assert 0.05 < shift.std() < 0.2
    assert perturb(cluster, 0, np.random.default_rng(0)) == []
    with pytest.raises(ValueError):
        perturb(cluster, 1, np.random.default_rng(0), cell_strain=-0.1)


def test_demo_frames_are_perturbed_silicon():
    from pfd_ase.recipes.demo import perturbed_silicon

    frames = perturbed_silicon(2, seed=5)
    again = perturb(silicon("diamond"), 2, np.random.default_rng(5), 0.02, 0.05)
    for f, g in zip(frames, again, strict=True):
        np.testing.assert_array_equal(f.positions, g.positions)
    assert [f.info["pfd_frame_id"] for f in frames] == ["init-000", "init-001"]


def test_labelled_silicon_draws_and_labels(tmp_path):
    """The tests' and benchmarks' SW-labelled Si: per frame a Gaussian 3×3 strain, then the
    displacements, from one default_rng(seed); labels as label_frames makes them."""
    import json

    pytest.importorskip("matscipy")
    from pfd_ase.calculators import make_labeler
    from pfd_ase.label import label_frames, label_in_memory
    from pfd_ase.materials import labelled_silicon

    frames = labelled_silicon(3, seed=4, size=(1, 1, 2), displacement_A=0.05)
    rng = np.random.default_rng(4)
    sw = make_labeler("sw")
    for atoms in frames:
        ref = bulk("Si", "diamond", a=5.43, cubic=True).repeat((1, 1, 2))
        ref.set_cell(ref.cell.array @ (np.eye(3) + rng.normal(0.0, 0.01, (3, 3))), True)
        ref.positions += rng.normal(0.0, 0.05, ref.positions.shape)
        np.testing.assert_array_equal(atoms.positions, ref.positions)
        np.testing.assert_array_equal(atoms.cell.array, ref.cell.array)
        ref.calc = sw
        assert atoms.get_potential_energy() == ref.get_potential_energy()
        np.testing.assert_array_equal(atoms.get_forces(), ref.get_forces())
        np.testing.assert_array_equal(atoms.get_stress(), ref.get_stress())
        assert atoms.info["pfd_labeler"] == "sw"
        assert json.loads(atoms.info["pfd_labeler_settings"])["parameters"]["epsilon"] == 2.1683
    again = labelled_silicon(3, seed=4, size=(1, 1, 2), displacement_A=0.05)
    assert all((a.positions == b.positions).all() for a, b in zip(frames, again, strict=True))

    # in memory = through task directories, bit for bit
    bare = [a.copy() for a in frames]
    for atoms in bare:
        atoms.calc = None
    on_disk = label_frames(bare, "tersoff", tmp_path).frames
    for a, b in zip(label_in_memory(bare, "tersoff"), on_disk, strict=True):
        assert a.calc.results.keys() == b.calc.results.keys()
        for key in a.calc.results:
            np.testing.assert_array_equal(a.calc.results[key], b.calc.results[key])
        assert {k: v for k, v in b.info.items() if k != "pfd_frame_id"} == a.info
    with pytest.raises(ValueError, match="unknown properties"):
        label_in_memory(bare, "sw", properties=("energy", "dipole"))


# ----------------------------------------------------------------------------- LATP


def _min_distances(atoms, cutoff: float = 3.2) -> dict[tuple[str, str], float]:
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, cutoff)
    sym = np.array(atoms.get_chemical_symbols())
    out: dict[tuple[str, str], float] = {}
    for a, b, dist in zip(sym[i], sym[j], d, strict=True):
        key = (a, b)
        out[key] = min(out.get(key, np.inf), float(dist))
    return out


def _bond_counts(atoms, a: str, b: str, cutoff: float) -> set[int]:
    from ase.neighborlist import neighbor_list

    i, j = neighbor_list("ij", atoms, cutoff)
    sym = np.array(atoms.get_chemical_symbols())
    counts = np.bincount(i[(sym[i] == a) & (sym[j] == b)], minlength=len(atoms))
    return set(counts[sym == a].tolist())


def test_nasicon_ltp_is_r3c_with_octahedra_and_tetrahedra():
    import spglib

    from pfd_ase.materials import nasicon_ltp

    hexagonal, primitive = nasicon_ltp(), nasicon_ltp(primitive=True)
    assert hexagonal.get_chemical_formula() == "Li6O72P18Ti12"  # Z = 6
    assert primitive.get_chemical_formula() == "Li2O24P6Ti4" and len(primitive) == 36
    for atoms in (hexagonal, primitive):
        cell = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
        assert spglib.get_spacegroup(cell, symprec=1e-3) == "R-3c (167)"
    assert primitive.get_volume() == pytest.approx(hexagonal.get_volume() / 3)
    d = _min_distances(hexagonal)
    assert 1.85 < d[("Ti", "O")] < 2.00 and 1.50 < d[("P", "O")] < 1.58
    assert 2.1 < d[("Li", "O")] < 2.4 and d[("O", "O")] > 2.3
    assert _bond_counts(hexagonal, "Ti", "O", 2.1) == {6}  # TiO6 octahedra
    assert _bond_counts(hexagonal, "P", "O", 1.7) == {4}  # PO4 tetrahedra
    assert _bond_counts(hexagonal, "Li", "O", 2.4) == {6}  # Li in M1 octahedra


def test_latp_substitutes_al_and_fills_m2_with_li():
    from pfd_ase.materials import latp

    atoms = latp(1 / 3)  # the supplement's 110-atom Li1.3Al0.3Ti1.7(PO4)3 cell
    assert len(atoms) == 110 and atoms.get_chemical_formula() == "Al2Li8O72P18Ti10"
    charge = {"Li": 1, "Al": 3, "Ti": 4, "P": 5, "O": -2}
    assert sum(charge[s] for s in atoms.get_chemical_symbols()) == 0
    assert atoms.info["latp_x"] == pytest.approx(1 / 3)
    big = latp(0.3, size=(2, 2, 1), seed=3)  # x = 0.3 is reachable with 24 formula units
    assert big.get_chemical_formula() == "Al7Li31O288P72Ti41"
    assert big.info["latp_x"] == pytest.approx(7 / 24)
    d = _min_distances(big)
    assert d[("Li", "O")] > 2.0 and d[("Al", "O")] > 1.85  # no atom on top of another
    assert min(v for (a, b), v in d.items() if "O" not in (a, b)) > 2.7


def test_latp_orderings_are_seeded():
    from pfd_ase.materials import latp

    first, again, other = latp(1 / 3, seed=0), latp(1 / 3, seed=0), latp(1 / 3, seed=1)
    assert first == again
    assert first.get_chemical_formula() == other.get_chemical_formula()
    assert not np.array_equal(first.numbers, other.numbers) or not np.allclose(
        first.positions, other.positions
    )
    assert len(latp(0.0)) == 108
    for bad in (-0.1, 2.5):
        with pytest.raises(ValueError, match="x must be in"):
            latp(bad)
    with pytest.raises(ValueError, match="not reachable"):
        latp(0.25)  # 6 formula units: 1.5 substitutions


def test_nasicon_ltp_is_relaxed_for_a_pbe_model():
    """The positions are SevenNet-0's relaxed ones at the experimental lattice."""
    pytest.importorskip("sevenn")
    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.materials import nasicon_ltp

    atoms = nasicon_ltp(primitive=True)
    atoms.calc = PFDCalculator("7net-0")
    assert np.abs(atoms.get_forces()).max() < 0.06  # 4-digit rounding of the coordinates
