"""Frame filters: too-close atoms (periodic images too), exploded or skewed cells, NaN labels."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from pfd_ase.selectors.filters import (
    REASON_KINDS,
    FrameFilter,
    check_cell,
    check_finite,
    check_max_force,
    check_min_distance,
    filter_frames,
    reason_kind,
    safe_distance_matrix,
)


def cu() -> Atoms:
    return bulk("Cu", "fcc", a=3.6, cubic=True)


def labelled(atoms: Atoms, **results) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


# --------------------------------------------------------------------------- single checks


def test_normal_crystal_passes_every_check():
    atoms = cu().repeat(2)
    atoms.rattle(0.05, seed=1)
    atoms.calc = EMT()
    atoms.get_forces()
    assert FrameFilter(max_force_eV_A=10.0).check(atoms, atoms.cell) is None
    assert check_min_distance(molecule("H2O")) is None  # non-periodic, no cell


def test_too_close_atoms_inside_the_cell():
    atoms = cu()
    atoms.positions[1] = atoms.positions[0] + [0.5, 0.0, 0.0]
    reason = check_min_distance(atoms)
    assert reason_kind(reason) == "too_close"
    assert "Cu-Cu 0.500" in reason and "atoms 0 and 1" in reason


def test_too_close_across_the_periodic_boundary():
    atoms = Atoms("Si2", positions=[[0.1, 2.0, 2.0], [5.6, 2.0, 2.0]], cell=[5.8] * 3, pbc=True)
    # 5.5 Å apart in the cell, 0.3 Å through the boundary
    reason = check_min_distance(atoms)
    assert reason is not None and "0.300" in reason
    atoms.pbc = False
    assert check_min_distance(atoms) is None


def test_a_short_cell_vector_brings_an_atom_close_to_its_own_image():
    atoms = Atoms("Cu", cell=[0.9, 5.0, 5.0], pbc=True)
    assert reason_kind(check_min_distance(atoms)) == "too_close"


def test_collapsed_cell_is_rejected_before_the_neighbour_list():
    atoms = cu().repeat(3)
    atoms.set_cell(atoms.cell * 1e-4, scale_atoms=True)  # a neighbour list would be enormous
    reason = check_min_distance(atoms)
    assert "per atom" in reason


def test_safe_distances_default_from_covalent_radii_and_overrides():
    from ase.data import covalent_radii

    elements, matrix = safe_distance_matrix([14, 8, 8], factor=0.5)
    assert elements.tolist() == [8, 14]
    assert matrix[0, 1] == pytest.approx(0.5 * (covalent_radii[8] + covalent_radii[14]))
    _, matrix = safe_distance_matrix([14, 8], 0.5, {"Si-O": 1.4, ("O", "O"): 2.0})
    assert matrix[0, 1] == matrix[1, 0] == 1.4 and matrix[0, 0] == 2.0
    atoms = cu()  # nearest neighbours 2.55 Å: fine by default, too close for a 2.6 Å override
    assert check_min_distance(atoms) is None
    assert reason_kind(check_min_distance(atoms, safe_distances={"Cu-Cu": 2.6})) == "too_close"
    with pytest.raises(ValueError, match="element pair"):
        FrameFilter(safe_distances={"CuCuCu": 1.0})
    with pytest.raises(ValueError, match="unknown element"):
        FrameFilter(safe_distances={"Cu-Xx": 1.0})


def test_stretched_compressed_and_skewed_cells():
    ref = cu()
    stretched = ref.copy()
    stretched.set_cell(ref.cell.array * [[2.0], [1.0], [1.0]], scale_atoms=True)
    assert "length a" in check_cell(stretched, ref)
    assert check_cell(stretched) is None  # relative limits need the starting cell
    swollen = ref.copy()
    swollen.set_cell(ref.cell * 1.3, scale_atoms=True)  # lengths 1.3x, volume 2.2x
    assert "volume" in check_cell(swollen, ref)
    squeezed = ref.copy()
    squeezed.set_cell(ref.cell * 0.75, scale_atoms=True)  # volume 0.42x
    assert "volume" in check_cell(squeezed, ref.cell.array)
    skewed = ref.copy()
    skewed.set_cell([[3.6, 0, 0], [3.55, 0.6, 0], [0, 0, 3.6]], scale_atoms=True)
    assert "angle gamma" in check_cell(skewed, max_length_ratio=None)
    sheared = ref.copy()  # 45 deg: within the absolute range, but 45 deg from the start
    sheared.set_cell([[3.6, 0, 0], [3.6, 3.6, 0], [0, 0, 3.6]], scale_atoms=True)
    assert check_cell(sheared, max_length_ratio=None, max_volume_ratio=None) is None
    reason = check_cell(sheared, ref, max_length_ratio=None, max_volume_ratio=None)
    assert "changed by 45.0 deg" in reason
    assert check_cell(molecule("H2O")) is None  # no periodic direction


def test_non_finite_positions_energy_forces_and_model_keys():
    atoms = cu()
    forces = np.zeros((4, 3))
    assert check_finite(labelled(atoms, energy=-1.0, forces=forces)) is None
    bad = forces.copy()
    bad[2, 1] = np.nan
    assert check_finite(labelled(atoms, energy=-1.0, forces=bad)) == "non_finite: forces"
    assert check_finite(labelled(atoms, energy=np.inf)) == "non_finite: energy"
    model = atoms.copy()
    model.info["pfd_model_energy"] = np.nan
    assert check_finite(model) == "non_finite: pfd_model_energy"
    moved = atoms.copy()
    moved.positions[0, 0] = np.nan
    assert check_finite(moved) == "non_finite: positions"
    # results of another structure are not this frame's labels
    stale = labelled(atoms, energy=np.nan)
    stale.positions[0] += 0.1
    assert check_finite(stale) is None


def test_max_force_is_optional():
    forces = np.zeros((4, 3))
    forces[3] = [30.0, 0.0, 40.0]
    atoms = labelled(cu(), energy=0.0, forces=forces)
    assert check_max_force(atoms, None) is None
    assert check_max_force(atoms, 60.0) is None
    assert check_max_force(atoms, 20.0).startswith("max_force: 50 eV/Å on atom 3")


# --------------------------------------------------------------------------- filter_frames


def test_filter_frames_keeps_good_frames_and_counts_reasons():
    ref = cu()
    good = [ref.copy() for _ in range(3)]
    for i, g in enumerate(good):
        g.rattle(0.02, seed=i)
    close = ref.copy()
    close.positions[1] = close.positions[0] + [0.3, 0.3, 0.0]
    wrapped = Atoms("Cu2", positions=[[0.05, 1, 1], [3.5, 1, 1]], cell=ref.cell, pbc=True)
    exploded = ref.copy()
    exploded.set_cell(ref.cell * 3.0, scale_atoms=True)
    nan = labelled(ref, energy=0.0, forces=np.full((4, 3), np.nan))
    big = labelled(ref, energy=0.0, forces=np.full((4, 3), 100.0))
    frames = [good[0], close, exploded, good[1], nan, wrapped, big, good[2]]
    result = filter_frames(frames, reference_cells=ref, max_force_eV_A=50.0)
    assert result.kept_indices == [0, 3, 7]
    assert all(a is b for a, b in zip(result.kept, [good[0], good[1], good[2]], strict=True))
    assert [i for i, _ in result.rejected] == [1, 2, 4, 5, 6]
    assert result.counts == {"non_finite": 1, "cell": 1, "too_close": 2, "max_force": 1}
    assert set(result.counts) == set(REASON_KINDS)
    # without the optional limit the large-force frame is kept
    assert filter_frames(frames, ref).kept_indices == [0, 3, 6, 7]


def test_filter_frames_reference_per_frame_and_settings():
    ref = cu()
    big = ref.copy()
    big.set_cell(ref.cell * 2.0, scale_atoms=True)
    # relative to its own starting cell the large frame is fine
    result = filter_frames([ref, big], reference_cells=[ref, big])
    assert result.kept_indices == [0, 1]
    assert filter_frames([ref, big], reference_cells=[ref, ref]).counts["cell"] == 1
    assert filter_frames([ref, big], reference_cells=[None, None]).kept_indices == [0, 1]
    with pytest.raises(ValueError, match="reference cells"):
        filter_frames([ref, big], reference_cells=[ref])
    flt = FrameFilter(max_volume_ratio=10.0, max_length_ratio=3.0)
    assert filter_frames([big], ref, frame_filter=flt).kept_indices == [0]
    with pytest.raises(TypeError):
        filter_frames([big], ref, frame_filter=flt, max_volume_ratio=3.0)
    with pytest.raises(TypeError):
        filter_frames(ref)
    with pytest.raises(ValueError):
        FrameFilter(distance_factor=-1.0)
    with pytest.raises(ValueError):
        FrameFilter(max_length_ratio=0.5)


def test_distance_check_is_vectorised_on_a_large_cell():
    import time

    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(6)  # 1728 atoms
    atoms.rattle(0.05, seed=0)
    start = time.perf_counter()
    assert check_min_distance(atoms) is None
    assert time.perf_counter() - start < 1.0
    atoms.positions[-1] = atoms.positions[0] + [0.0, 0.0, 0.4]
    assert f"atoms 0 and {len(atoms) - 1}" in check_min_distance(atoms)
