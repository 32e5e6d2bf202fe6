"""Linear-scaling Verlet neighbour lists in deepmd-kit's extended-region form.

deepmd-kit's ``DeepPot.eval`` builds its neighbour list from a dense ``N x 27N`` distance
tensor: quadratic in memory and time, more than 14 GB at 4096 atoms. A model's lower interface
(``forward_lower``, what LAMMPS calls) takes instead the *extended* system — the local atoms
followed by the periodic images (ghosts) that lie within reach of them — and a neighbour list
into it. :class:`VerletList` builds that with a cell list (matscipy's C neighbour search when
installed, else ASE's) in O(N), for the cut-off plus a skin, and reuses it while no extended
atom moved more than half the skin since the build (as LAMMPS does). Every call it recomputes
the extended coordinates from the current positions and cell and keeps only the pairs within
the cut-off, so the model sees exactly the neighbours a fresh list would give.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ExtendedSystem", "VerletList"]


class ExtendedSystem:
    """The arrays of one call: extended coordinates, types, neighbour list and mapping.

    Attributes
    ----------
    coords
        ``(n_all, 3)`` coordinates (Å): the local atoms first, then their images.
    mapping
        ``(n_all,)`` index of the local atom each extended atom is a copy of.
    nlist
        ``(n_local, width)`` indices into the extended atoms of the neighbours within the
        cut-off, padded with -1.
    """

    def __init__(self, coords: np.ndarray, mapping: np.ndarray, nlist: np.ndarray) -> None:
        self.coords = coords
        self.mapping = mapping
        self.nlist = nlist

    def split(self, size: int) -> list[ExtendedSystem]:
        """Cut the system into pieces of at most ``size`` local atoms.

        Each piece holds its local atoms (consecutive indices) followed by every other
        extended atom their neighbour lists reach, renumbered; its ``mapping`` is the
        original local atom of each of its extended atoms. For a model whose atoms see only
        their own neighbours (no message passing), the pieces' atomic energies, extended
        forces and virials sum to the whole system's.

        Parameters
        ----------
        size
            Local atoms per piece, at least 1.

        Returns
        -------
        list of ExtendedSystem
            The pieces, in the order of their local atoms.

        Raises
        ------
        ValueError
            ``size`` below 1.
        """
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        n, n_all = len(self.nlist), len(self.coords)
        where = np.full(n_all, -1, dtype=np.int64)
        pieces = []
        for start in range(0, n, size):
            stop = min(start + size, n)
            rows = self.nlist[start:stop]
            reached = np.unique(rows[rows >= 0])
            others = reached[(reached < start) | (reached >= stop)]
            index = np.concatenate([np.arange(start, stop), others])
            where[index] = np.arange(len(index))
            nlist = np.where(rows >= 0, where[np.maximum(rows, 0)], -1)
            where[index] = -1
            pieces.append(ExtendedSystem(self.coords[index], self.mapping[index], nlist))
        return pieces


def _pairs(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``i, j, S`` of every pair within ``cutoff`` (``d = x_j - x_i + S @ cell``), by ``i``."""
    try:
        from matscipy.neighbours import neighbour_list
    except ImportError:
        from ase.neighborlist import primitive_neighbor_list

        i, j, shift = primitive_neighbor_list(
            "ijS", pbc, cell, positions, cutoff, self_interaction=False
        )
    else:
        i, j, shift = neighbour_list("ijS", positions=positions, cell=cell, pbc=pbc, cutoff=cutoff)
    order = np.argsort(i, kind="stable")
    return i[order], j[order], np.asarray(shift, dtype=np.int64)[order]


class VerletList:
    """A reusable neighbour list with a skin, in deepmd-kit's extended-region form.

    Parameters
    ----------
    cutoff
        The model's cut-off radius (Å).
    skin
        Extra reach of the list (Å); it is rebuilt once an extended atom has moved more than
        ``skin / 2`` since the last build (atoms, or images through a change of the cell).

    Attributes
    ----------
    builds
        How many times the list was built (for tests and benchmarks).
    """

    def __init__(self, cutoff: float, skin: float = 1.0) -> None:
        if cutoff <= 0 or skin < 0:
            raise ValueError(f"need cutoff > 0 and skin >= 0, got {cutoff}, {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.builds = 0
        self._key: tuple | None = None
        self._ref: np.ndarray | None = None

    def _build(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> None:
        n = len(positions)
        box = cell
        if not pbc.any():  # a box around the atoms; no images are made
            box = np.diag(np.ptp(positions, axis=0) + 2 * (self.cutoff + self.skin) + 1.0)
            positions = positions - positions.min(axis=0) + self.cutoff + self.skin
        i, j, shift = _pairs(positions, box, pbc, self.cutoff + self.skin)
        image = shift.any(axis=1)
        # one ghost per distinct (atom, image): key the pairs that cross the boundary
        span = int(np.abs(shift).max(initial=0)) * 2 + 1
        code = ((shift + span // 2) * np.array([span * span, span, 1])).sum(axis=1)
        key = j.astype(np.int64) * span**3 + code
        ghosts, ghost_of_pair = np.unique(key[image], return_inverse=True)
        ext = j.astype(np.int64).copy()
        ext[image] = n + ghost_of_pair
        ghost_atom = ghosts // span**3
        ghost_shift = np.stack(
            [
                (ghosts % span**3) // (span * span) - span // 2,
                (ghosts % (span * span)) // span - span // 2,
                ghosts % span - span // 2,
            ],
            axis=1,
        )
        self.mapping = np.concatenate([np.arange(n), ghost_atom]).astype(np.int64)
        self.shifts = np.concatenate([np.zeros((n, 3), dtype=np.int64), ghost_shift])
        counts = np.bincount(i, minlength=n)
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.pair_i = i.astype(np.int64)
        self.pair_ext = ext
        self.pair_col = np.arange(len(i)) - start[i]
        self.width = int(counts.max(initial=0))
        self.builds += 1

    def _extended(self, positions: np.ndarray, cell: np.ndarray) -> np.ndarray:
        return positions[self.mapping] + self.shifts @ cell

    def update(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> ExtendedSystem:
        """The extended system and exact neighbour list for these positions and cell."""
        positions = np.asarray(positions, dtype=float)
        cell = np.asarray(cell, dtype=float)
        pbc = np.asarray(pbc, dtype=bool)
        key = (len(positions), tuple(pbc.tolist()))
        coords = None
        if self._key == key and self._ref is not None:
            coords = self._extended(positions, cell)
            moved = np.sqrt(((coords - self._ref) ** 2).sum(axis=1).max(initial=0.0))
            if moved > self.skin / 2:
                coords = None
        if coords is None:
            self._build(positions, cell, pbc)
            self._key = key
            coords = self._extended(positions, cell)
            self._ref = coords.copy()
        n = len(positions)
        d = coords[self.pair_ext] - coords[self.pair_i]
        inside = (d * d).sum(axis=1) <= self.cutoff * self.cutoff
        # exactly the pairs within the cut-off, compacted to the left of each row
        rows, ext = self.pair_i[inside], self.pair_ext[inside]
        counts = np.bincount(rows, minlength=n)
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        nlist = np.full((n, max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
        nlist[rows, np.arange(len(rows)) - start[rows]] = ext
        return ExtendedSystem(coords, self.mapping, nlist)
