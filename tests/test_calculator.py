"""PFDCalculator on tiny deepmd-kit models trained by the fixtures (real deepmd-kit runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.io import read, write
from scipy.spatial.transform import Rotation

from conftest import requires_deepmd

pytestmark = requires_deepmd


def _cell(seed=3):
    atoms = bulk("Cu", "fcc", a=3.62, cubic=True).repeat((2, 1, 1))
    atoms[1].symbol = "Ag"
    atoms.rattle(0.05, seed=seed)
    return atoms


@pytest.fixture(params=["pth", "ckpt"])
def model_path(request, tiny_models):
    return tiny_models[1][request.param]


def test_forces_and_stress_equal_finite_differences(model_path):
    from pfd_ase.calculators import PFDCalculator

    atoms = _cell()
    atoms.calc = PFDCalculator(model_path)
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-3  # a rattled cell has non-zero forces
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-4), atol=1e-6)
    np.testing.assert_allclose(
        atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-5), atol=1e-7
    )
    assert atoms.get_stress().shape == (6,)
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), atoms.get_potential_energy())
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()


def test_frozen_and_checkpoint_agree(tiny_models):
    from pfd_ase.calculators import PFDCalculator

    atoms = _cell()
    e_pth = PFDCalculator(tiny_models[1]["pth"]).get_potential_energy(atoms)
    e_ckpt = PFDCalculator(tiny_models[1]["ckpt"]).get_potential_energy(atoms)
    assert e_pth == pytest.approx(e_ckpt, abs=1e-8)


def test_rotation_translation_permutation_invariance(tiny_models):
    from pfd_ase.calculators import PFDCalculator

    calc = PFDCalculator(tiny_models[1]["pth"])
    atoms = _cell()
    atoms.calc = calc
    e0, f0, s0 = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)

    rot = Rotation.from_euler("xyz", [0.3, -0.7, 1.1]).as_matrix()
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    rotated.positions = atoms.positions @ rot.T
    rotated.calc = calc
    assert rotated.get_potential_energy() == pytest.approx(e0, abs=1e-8)
    np.testing.assert_allclose(rotated.get_forces(), f0 @ rot.T, atol=1e-8)
    np.testing.assert_allclose(rotated.get_stress(voigt=False), rot @ s0 @ rot.T, atol=1e-9)

    moved = atoms.copy()
    moved.translate([0.37, -1.2, 2.9])
    moved.calc = calc
    assert moved.get_potential_energy() == pytest.approx(e0, abs=1e-8)
    np.testing.assert_allclose(moved.get_forces(), f0, atol=1e-8)

    perm = np.random.default_rng(0).permutation(len(atoms))
    shuffled = atoms[perm]
    shuffled.calc = calc
    assert shuffled.get_potential_energy() == pytest.approx(e0, abs=1e-8)
    np.testing.assert_allclose(shuffled.get_forces(), f0[perm], atol=1e-8)


def test_non_periodic_cluster_has_forces_but_no_stress(tiny_models):
    from pfd_ase.calculators import PFDCalculator

    cluster = Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0.1, 0.2, 2.4]])
    cluster.calc = PFDCalculator(tiny_models[1]["pth"])
    np.testing.assert_allclose(
        cluster.get_forces(), calculate_numerical_forces(cluster, eps=1e-4), atol=1e-6
    )
    with pytest.raises(PropertyNotImplementedError):
        cluster.get_stress()
    mixed = _cell()
    mixed.pbc = [True, True, False]
    mixed.calc = cluster.calc
    with pytest.raises(NotImplementedError, match="mixed periodic"):
        mixed.get_potential_energy()


def test_committee_deviation(tiny_models, tmp_path):
    from pfd_ase.calculators import PFDCalculator

    m1, m2 = tiny_models[1]["pth"], tiny_models[2]["pth"]
    atoms = _cell()
    atoms.calc = PFDCalculator([m1, m1])
    atoms.get_forces()
    assert atoms.info["pfd_max_force_devi"] == 0.0
    assert np.all(atoms.arrays["pfd_force_devi"] == 0.0)

    atoms.calc = PFDCalculator([m1, m2])
    forces = atoms.get_forces()
    f1 = PFDCalculator(m1).get_forces(atoms.copy())
    f2 = PFDCalculator(m2).get_forces(atoms.copy())
    np.testing.assert_allclose(forces, (f1 + f2) / 2, atol=1e-10)
    # two members: deviation = |f1 - f2| / 2 per atom
    expected = np.linalg.norm(f1 - f2, axis=1) / 2
    np.testing.assert_allclose(atoms.arrays["pfd_force_devi"], expected, rtol=1e-10)
    assert atoms.info["pfd_max_force_devi"] == pytest.approx(expected.max())
    assert atoms.info["pfd_max_force_devi"] > 0
    # ASE writers keep the committee statistics
    write(tmp_path / "c.extxyz", atoms)
    back = read(tmp_path / "c.extxyz")
    np.testing.assert_allclose(back.arrays["pfd_force_devi"], expected, atol=1e-7)


def test_multitask_head_selection(multitask_model):
    from pfd_ase.calculators import PFDCalculator, list_heads

    assert list_heads(multitask_model) == ["cu", "cu2"]
    atoms = _cell()
    e_a = PFDCalculator(multitask_model, head="cu").get_potential_energy(atoms)
    e_b = PFDCalculator(multitask_model, head="CU2").get_potential_energy(atoms)
    assert np.isfinite(e_a) and np.isfinite(e_b)
    assert e_a != pytest.approx(e_b, abs=1e-6)  # separate fitting nets
    with pytest.raises(ValueError, match=r"no head named 'nope'.*\['cu', 'cu2'\]"):
        PFDCalculator(multitask_model, head="nope")
    with pytest.raises(ValueError, match=r"multi-task.*\['cu', 'cu2'\]"):
        PFDCalculator(multitask_model)


def test_teacher_labels_record_model_path_head_and_hash(multitask_model, tmp_path):
    """Frames labelled by a PFDCalculator (the teacher of distillation) record which model,
    which head and which file content, as a DFT labeler's frames record its settings."""
    import hashlib
    import json

    from pfd_ase.calculators import PFDCalculator, labeler_info
    from pfd_ase.label import label_frames

    teacher = PFDCalculator(multitask_model, head="CU2")  # an alias: recorded canonical
    assert dict(teacher.parameters) == {"model": str(multitask_model), "head": "cu2"}
    sha = hashlib.sha256(Path(multitask_model).read_bytes()).hexdigest()
    assert teacher.identity == f"deepmd:sha256={sha}:head=cu2"

    result = label_frames([_cell()], teacher, tmp_path / "label")
    (frame,) = result.frames
    assert frame.info["pfd_labeler"] == "pfd"
    settings = json.loads(frame.info["pfd_labeler_settings"])
    assert settings["model"] == str(multitask_model) and settings["head"] == "cu2"
    assert settings["identity"] == teacher.identity
    assert settings["version"].startswith("pfd_ase ")
    assert settings == labeler_info(teacher)["settings"]
    # the parameters rebuild the teacher, and a rerun with it reuses the task
    again = PFDCalculator(**teacher.parameters)
    assert label_frames([_cell()], again, tmp_path / "label").n_cached == 1
    # another head is another labeler
    other = labeler_info(PFDCalculator(multitask_model, head="cu"))["settings"]
    assert other["head"] == "cu" and other["identity"] != settings["identity"]


def test_committee_parameters_and_identity(tiny_models):
    from pfd_ase.calculators import PFDCalculator, labeler_info

    paths = [tiny_models[1]["pth"], tiny_models[2]["pth"]]
    calc = PFDCalculator(paths)
    assert dict(calc.parameters) == {"model": [str(p) for p in paths], "head": None}
    assert len(calc.identity) == 2 and calc.identity[0] != calc.identity[1]
    assert labeler_info(calc)["settings"]["identity"] == calc.identity


def test_head_on_single_task_model_is_an_error(tiny_models):
    from pfd_ase.calculators import PFDCalculator

    with pytest.raises(ValueError, match="single-task"):
        PFDCalculator(tiny_models[1]["ckpt"], head="cu")


def test_unknown_element_names_element_and_type_map(tiny_models):
    from pfd_ase.calculators import PFDCalculator

    calc = PFDCalculator(tiny_models[1]["pth"])
    with pytest.raises(ValueError, match=r"\['Si'\].*\['Cu', 'Ag'\]"):
        calc.get_potential_energy(bulk("Si", "diamond", a=5.43))


def test_bad_model_paths(tmp_path):
    from pfd_ase.calculators import PFDCalculator

    with pytest.raises(FileNotFoundError):
        PFDCalculator(tmp_path / "missing.pth")
    (tmp_path / "model.txt").write_text("x")
    with pytest.raises(ValueError, match="cannot tell"):
        PFDCalculator(tmp_path / "model.txt")
    with pytest.raises(ValueError, match="at least one"):
        PFDCalculator([])


# --------------------------------------------------------------------------- neighbour lists
def _rattled(reps, seed, a=3.62):
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(reps)
    atoms[0].symbol = "Ag"
    atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.normal(0, 0.02, (3, 3))), scale_atoms=True)
    return atoms


@pytest.mark.parametrize("reps", [(1, 1, 1), (2, 2, 2), (3, 2, 1)])
def test_verlet_lower_path_equals_deepmd_eval(model_path, reps):
    """The lower interface on the Verlet list gives DeepPot.eval's results to 1e-10, also for
    a cell smaller than the cut-off (many images of each atom), while the list is reused."""
    from pfd_ase.calculators.backends import DeepmdBackend

    native = DeepmdBackend(model_path, neighbour_list="native")
    verlet = DeepmdBackend(model_path, neighbour_list="verlet", skin=1.0)
    atoms = _rattled(reps, seed=sum(reps))
    rng = np.random.default_rng(1)
    for _ in range(3):
        a, b = native.evaluate(atoms), verlet.evaluate(atoms)
        assert b.energy == pytest.approx(a.energy, abs=1e-10)
        np.testing.assert_allclose(b.forces, a.forces, atol=1e-10)
        np.testing.assert_allclose(b.virial, a.virial, atol=1e-10)
        np.testing.assert_allclose(b.energies, a.energies, atol=1e-10)
        atoms.positions += rng.normal(0.0, 0.02, atoms.positions.shape)  # < skin / 2
    assert verlet.verlet.builds == 1


def test_verlet_list_is_rebuilt_when_atoms_or_cell_move_far(model_path):
    from pfd_ase.calculators.backends import DeepmdBackend

    native = DeepmdBackend(model_path, neighbour_list="native")
    verlet = DeepmdBackend(model_path, skin=0.5)
    atoms = _rattled((2, 2, 1), seed=5)
    verlet.evaluate(atoms)
    atoms.positions[3] += [0.3, 0.0, 0.0]  # more than skin / 2
    np.testing.assert_allclose(
        verlet.evaluate(atoms).forces, native.evaluate(atoms).forces, 0, 1e-10
    )
    assert verlet.verlet.builds == 2
    atoms.set_cell(atoms.cell.array * 1.05, scale_atoms=False)  # images move with the cell
    a, b = native.evaluate(atoms), verlet.evaluate(atoms)
    assert verlet.verlet.builds == 3
    np.testing.assert_allclose(b.virial, a.virial, atol=1e-10)
    atoms.wrap()  # atoms jumping through a face: their images are relabelled
    atoms.positions[0] -= atoms.cell[0] * 1.0
    a, b = native.evaluate(atoms), verlet.evaluate(atoms)
    np.testing.assert_allclose(b.forces, a.forces, atol=1e-10)


def test_verlet_path_on_a_molecule(model_path):
    from pfd_ase.calculators.backends import DeepmdBackend

    atoms = _rattled((2, 2, 2), seed=7)
    atoms.pbc = False
    a = DeepmdBackend(model_path, neighbour_list="native").evaluate(atoms)
    b = DeepmdBackend(model_path).evaluate(atoms)
    assert b.energy == pytest.approx(a.energy, abs=1e-10)
    np.testing.assert_allclose(b.forces, a.forces, atol=1e-10)


@pytest.mark.parametrize("chunk, periodic", [(5, True), (7, True), (6, False)])
def test_pieces_sum_to_the_whole_cell(tiny_student, chunk, periodic):
    """A model without message passing evaluated in pieces of local atoms gives the one-call
    results to 1e-10 (per-atom energies asked for or not; a cluster too, whose far atom has
    no neighbour at all), while the list is reused."""
    from pfd_ase.calculators.backends import DeepmdBackend

    atoms = _rattled((2, 2, 2), seed=11)
    if not periodic:
        atoms.pbc = False
        atoms.positions[-1] += [30.0, 0.0, 0.0]  # an isolated atom: an empty neighbour row
    whole = DeepmdBackend(tiny_student, chunk_atoms=None)
    split = DeepmdBackend(tiny_student, chunk_atoms=chunk)
    assert whole._local and split._local
    assert [
        len(p.nlist)
        for p in split.pieces(split.verlet.update(atoms.positions, atoms.cell.array, atoms.pbc))
    ][0] == chunk
    rng = np.random.default_rng(2)
    for atomic in (True, False, True):
        a, b = whole.evaluate(atoms, atomic), split.evaluate(atoms, atomic)
        assert b.energy == pytest.approx(a.energy, abs=1e-10)
        np.testing.assert_allclose(b.forces, a.forces, atol=1e-10)
        if periodic:
            np.testing.assert_allclose(b.virial, a.virial, atol=1e-10)
        if atomic:
            np.testing.assert_allclose(b.energies, a.energies, atol=1e-10)
        else:
            assert b.energies is None
        atoms.positions += rng.normal(0.0, 0.02, atoms.positions.shape)
    assert split.verlet.builds == 1  # built once (the update above), then reused
    assert np.abs(a.forces).max() > 1e-3


def test_pieces_cover_each_local_atom_once(tiny_student):
    from pfd_ase.calculators.backends import DeepmdBackend

    backend = DeepmdBackend(tiny_student)
    atoms = _rattled((3, 2, 1), seed=4)
    system = backend.verlet.update(atoms.positions, atoms.cell.array, atoms.pbc)
    pieces = system.split(5)
    local = np.concatenate([p.mapping[: len(p.nlist)] for p in pieces])
    np.testing.assert_array_equal(local, np.arange(len(atoms)))
    for piece in pieces:  # the same neighbours, by position, as in the whole system
        rows = piece.nlist >= 0
        start = piece.mapping[0]
        whole = system.nlist[start : start + len(piece.nlist)]
        np.testing.assert_allclose(
            piece.coords[piece.nlist[rows]], system.coords[whole[whole >= 0]], atol=0
        )
    with pytest.raises(ValueError, match="at least 1"):
        system.split(0)


def test_message_passing_model_is_never_split(tiny_models):
    """DPA-2's repformer passes messages: its atoms' energies need the other atoms' features,
    so the cell goes to the model whole."""
    from pfd_ase.calculators.backends import DeepmdBackend

    backend = DeepmdBackend(tiny_models[1]["pth"], chunk_atoms=2)
    assert not backend._local
    assert backend._piece_size(1000) == 1000


def test_bad_neighbour_list_option(model_path):
    from pfd_ase.calculators.backends import DeepmdBackend
    from pfd_ase.calculators.neighbours import VerletList

    with pytest.raises(ValueError, match="'verlet' or 'native'"):
        DeepmdBackend(model_path, neighbour_list="dense")
    with pytest.raises(ValueError, match="skin"):
        VerletList(6.0, skin=-1.0)
    with pytest.raises(ValueError, match="chunk_atoms"):
        DeepmdBackend(model_path, chunk_atoms=0)
