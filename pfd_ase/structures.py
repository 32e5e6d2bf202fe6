"""Starting structures from plain specifications, and seeded perturbations of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from ase import Atoms

_SPEC_KEYS = {"bulk", "file", "repeat", "vacancy", "index"}


def build_structure(spec: Mapping[str, Any] | Atoms) -> Atoms:
    """Build one structure.

    ``spec`` holds either ``bulk`` (keyword arguments of :func:`ase.build.bulk`, e.g.
    ``{"name": "Si", "crystalstructure": "diamond", "a": 5.43, "cubic": True}``) or ``file``
    (any file ASE reads; ``index`` picks a frame), then optionally ``repeat`` (``[n1, n2, n3]``)
    and ``vacancy`` (index of an atom to delete after repeating). An ``Atoms`` (a structure
    given from Python) is returned as a copy without its calculator.
    """
    if isinstance(spec, Atoms):
        atoms = spec.copy()
        atoms.calc = None
        return atoms
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"unknown structure keys {sorted(unknown)}; known: {sorted(_SPEC_KEYS)}")
    if ("bulk" in spec) == ("file" in spec):
        raise ValueError("a structure needs exactly one of 'bulk' or 'file'")
    if "bulk" in spec:
        from ase.build import bulk

        atoms = bulk(**dict(spec["bulk"]))
    else:
        from ase.io import read

        atoms = read(spec["file"], index=spec.get("index", -1))
    if "repeat" in spec:
        atoms = atoms.repeat(tuple(int(n) for n in spec["repeat"]))
    if "vacancy" in spec:
        index = int(spec["vacancy"])
        if not 0 <= index < len(atoms):
            raise ValueError(f"vacancy index {index} out of range for {len(atoms)} atoms")
        del atoms[index]
    atoms.calc = None
    return atoms


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
