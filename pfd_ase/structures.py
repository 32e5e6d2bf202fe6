"""Starting structures from plain specifications, checks of them, and seeded perturbations."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

__all__ = ["STRUCTURE_FORMS", "build_structure", "closest_pair", "perturb", "repeated_to"]

_SPEC_KEYS = {"bulk", "file", "repeat", "vacancy", "index"}

#: The accepted shapes of a structure specification, for error messages.
STRUCTURE_FORMS = (
    "a file path (any file ASE reads), {file: path, index: n}, or {bulk: {name: Si, "
    "crystalstructure: diamond, a: 5.43}} (ase.build.bulk arguments), optionally with "
    "repeat: [n1, n2, n3] and vacancy: atom index"
)


def build_structure(spec: Mapping[str, Any] | str | os.PathLike | Atoms) -> Atoms:
    """Build one structure.

    ``spec`` is a file path (any file ASE reads; its last frame), or a mapping that holds
    either ``bulk`` (keyword arguments of :func:`ase.build.bulk`, e.g.
    ``{"name": "Si", "crystalstructure": "diamond", "a": 5.43, "cubic": True}``) or ``file``
    (a path; ``index`` picks a frame), then optionally ``repeat`` (``[n1, n2, n3]``) and
    ``vacancy`` (index of an atom to delete after repeating). An ``Atoms`` (a structure
    given from Python) is returned as a copy without its calculator.

    Raises
    ------
    ValueError
        A spec of another shape (the message says which are accepted), unknown keys, a file
        that does not exist or that ASE cannot read (the message names the file), a vacancy
        index out of range.
    """
    if isinstance(spec, Atoms):
        atoms = spec.copy()
        atoms.calc = None
        return atoms
    if isinstance(spec, str | os.PathLike):
        spec = {"file": os.fspath(spec)}
    if not isinstance(spec, Mapping):
        raise ValueError(f"a structure is {STRUCTURE_FORMS}; got {spec!r}")
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"unknown structure keys {sorted(unknown)}; known: {sorted(_SPEC_KEYS)}")
    if ("bulk" in spec) == ("file" in spec):
        raise ValueError(f"a structure needs exactly one of 'bulk' or 'file': {STRUCTURE_FORMS}")
    if "bulk" in spec:
        from ase.build import bulk

        if not isinstance(spec["bulk"], Mapping):
            raise ValueError(
                f"bulk takes the arguments of ase.build.bulk as a mapping, got {spec['bulk']!r}"
            )
        atoms = bulk(**dict(spec["bulk"]))
    else:
        atoms = _read_structure(spec["file"], spec.get("index", -1))
    if "repeat" in spec:
        atoms = atoms.repeat(tuple(int(n) for n in spec["repeat"]))
    if "vacancy" in spec:
        index = int(spec["vacancy"])
        if not 0 <= index < len(atoms):
            raise ValueError(f"vacancy index {index} out of range for {len(atoms)} atoms")
        del atoms[index]
    atoms.calc = None
    return atoms


def _read_structure(file: Any, index: Any) -> Atoms:
    """One frame of a structure file; a clear ``ValueError`` naming the file otherwise."""
    from ase.io import read

    path = Path(os.fspath(file))
    if not path.is_file():
        raise ValueError(f"structure file not found: {path}")
    try:
        atoms = read(path, index=index)
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(
            f"cannot read structure file {path}: {type(exc).__name__}"
            + (f": {text}" if text else "")
        ) from exc
    if not isinstance(atoms, Atoms) or len(atoms) == 0:
        raise ValueError(f"structure file {path} holds no atoms (index {index!r})")
    return atoms


def closest_pair(atoms: Atoms, factor: float = 0.5) -> tuple[int, int, float, float] | None:
    """The closest pair of atoms nearer than ``factor`` times the sum of their covalent radii.

    Periodic images count (a cell too small for its atoms has an atom overlapping its own
    image: ``i == j``).

    Parameters
    ----------
    atoms
        The structure.
    factor
        Fraction of the sum of covalent radii (:data:`ase.data.covalent_radii`) below which
        two atoms overlap; 0.5 flags only unphysical structures (a H-H bond is 1.2 times
        the sum, the densest crystals about 0.8-1).

    Returns
    -------
    tuple or None
        ``(i, j, distance_A, limit_A)`` of the worst pair (smallest distance over limit), or
        ``None`` when no pair overlaps.
    """
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    if len(atoms) == 0:
        return None
    radii = factor * covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, radii, self_interaction=False)
    if len(i) == 0:
        return None
    limit = radii[i] + radii[j]
    k = int(np.argmin(d / limit))
    return int(i[k]), int(j[k]), float(d[k]), float(limit[k])


def perturb(
    atoms: Atoms,
    n: int,
    rng: np.random.Generator,
    cell_strain: float = 0.03,
    displacement_A: float = 0.1,
) -> list[Atoms]:
    """``n`` randomly strained and displaced copies of ``atoms`` (the one perturbation of the
    package: the workflow's initial data, the recipes and the benchmarks use it).

    Parameters
    ----------
    atoms
        The structure (never modified).
    n
        Number of copies.
    rng
        The random generator; its draws, per copy: a 3×3 uniform strain (only for a fully
        periodic cell), then the N×3 displacements. The same generator state gives the same
        copies.
    cell_strain
        Each component of the strain ε is uniform in ``±cell_strain``; the cell becomes
        ``cell @ (I + (ε + εᵀ)/2)``, atoms scaled with it. Skipped unless ``atoms.pbc`` is
        all true.
    displacement_A
        Standard deviation of the Gaussian displacement of each Cartesian coordinate, Å.

    Returns
    -------
    list of Atoms
        The copies (``atoms``' calculator, if any, is not attached to them).
    """
    if n < 0 or cell_strain < 0 or displacement_A < 0:
        raise ValueError("n, cell_strain and displacement_A must be non-negative")
    out = []
    for _ in range(n):
        new = atoms.copy()
        if new.pbc.all():
            eps = rng.uniform(-cell_strain, cell_strain, (3, 3))
            new.set_cell(new.cell.array @ (np.eye(3) + (eps + eps.T) / 2), scale_atoms=True)
        new.positions += rng.normal(0.0, displacement_A, new.positions.shape)
        out.append(new)
    return out


def repeated_to(atoms: Atoms, min_atoms: int) -> Atoms:
    """``atoms`` repeated until it holds at least ``min_atoms`` atoms, as compact as possible.

    Each step adds one repeat along the lattice vector whose repeated perpendicular height
    (``n_i / |b_i|``, ``b`` the reciprocal vectors) is the smallest (the lowest index on a
    tie), so the supercell grows towards a cube. Only periodic directions are repeated.

    Parameters
    ----------
    atoms
        The structure (never modified).
    min_atoms
        The least number of atoms of the result (an integer > 0); a structure that already
        holds as many is returned as a copy.

    Returns
    -------
    Atoms
        A new object without a calculator.
    """
    if isinstance(min_atoms, bool) or not isinstance(min_atoms, int | np.integer):
        raise ValueError(f"min_atoms must be an integer > 0, got {min_atoms!r}")
    if min_atoms < 1:
        raise ValueError(f"min_atoms must be an integer > 0, got {min_atoms}")
    periodic = np.flatnonzero(atoms.pbc)
    repeats = np.ones(3, dtype=int)
    if len(atoms) and len(periodic) and atoms.cell.rank == 3:
        heights = 1.0 / np.linalg.norm(np.linalg.inv(atoms.cell.array), axis=0)
        while len(atoms) * repeats.prod() < min_atoms:
            axis = periodic[np.argmin((heights * repeats)[periodic])]
            repeats[axis] += 1
    out = atoms.repeat(tuple(int(n) for n in repeats))
    out.calc = None
    return out
