"""Local structure of a configuration: coordination, sp³ fraction, radial distribution.

:func:`coordination_numbers` counts neighbours within a cutoff (ASE's neighbour list),
:func:`sp3_fraction` the share of four-coordinated atoms of an element (the usual
measure of amorphous carbon), :func:`radial_distribution` averages g(r) over frames with
ASE's :func:`ase.geometry.rdf.get_rdf`.

Units: Å.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from ase import Atoms

__all__ = ["CARBON_BOND_CUTOFF_A", "coordination_numbers", "radial_distribution", "sp3_fraction"]

#: Neighbour cutoff of carbon, Å: between the C-C bond (1.42-1.54 Å) and the second
#: neighbours (2.46-2.52 Å); 1.85 Å is the cutoff used in most a-C studies.
CARBON_BOND_CUTOFF_A = 1.85


def coordination_numbers(atoms: Atoms, cutoff_A: float) -> np.ndarray:
    """Neighbours of each atom within ``cutoff_A`` (periodic images included)."""
    from ase.neighborlist import neighbor_list

    if cutoff_A <= 0:
        raise ValueError(f"cutoff_A must be positive, got {cutoff_A}")
    i = neighbor_list("i", atoms, cutoff_A)
    return np.bincount(i, minlength=len(atoms))


def sp3_fraction(atoms: Atoms, cutoff_A: float = CARBON_BOND_CUTOFF_A, symbol: str = "C") -> float:
    """Share of ``symbol`` atoms with exactly four neighbours within ``cutoff_A``."""
    mask = np.array([s == symbol for s in atoms.get_chemical_symbols()])
    if not mask.any():
        raise ValueError(f"no {symbol} in {atoms.get_chemical_formula()}")
    return float(np.mean(coordination_numbers(atoms, cutoff_A)[mask] == 4))


def radial_distribution(
    frames: Atoms | Iterable[Atoms], rmax_A: float, nbins: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """g(r) averaged over ``frames`` up to ``rmax_A`` (less than half the smallest cell
    height): ``(r, g)``, bin centres in Å."""
    from ase.geometry.rdf import get_rdf

    frames = [frames] if isinstance(frames, Atoms) else list(frames)
    if not frames:
        raise ValueError("no frames")
    g, r = get_rdf(frames, rmax_A, nbins)
    return np.asarray(r), np.asarray(g)
