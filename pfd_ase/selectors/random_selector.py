"""Random frame selection, the baseline of the PFD supplement's Fig. S1."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from pfd_ase.selectors.base import as_frames, check_count


class RandomSelector:
    """Pick ``n_target`` candidate frames uniformly at random, without replacement.

    Each :meth:`select` call draws from a fresh ``np.random.default_rng(seed)`` (never the
    global numpy state): the same seed and number of candidates give the same indices.

    Parameters
    ----------
    chunk_size
        Frames per round (>= 1), as for :class:`~pfd_ase.selectors.EntropySelector`: drawing
        round by round without replacement is the same draw, so it does not change the result.
    n_target
        Number of frames to select (>= 1, required); fewer if there are fewer candidates.
    seed
        Anything ``np.random.default_rng`` accepts; None draws fresh entropy from the OS.
    """

    def __init__(self, chunk_size: int = 10, n_target: int | None = None, seed: int | None = 0):
        if n_target is None:
            raise TypeError("RandomSelector needs n_target, the number of frames to select")
        self.chunk_size = check_count(chunk_size, "chunk_size")
        self.n_target = check_count(n_target, "n_target")
        np.random.default_rng(seed)  # reject an invalid seed here, not at select time
        self.seed = seed

    def __repr__(self) -> str:
        return (
            f"RandomSelector(chunk_size={self.chunk_size}, n_target={self.n_target}, "
            f"seed={self.seed!r})"
        )

    def select(
        self, candidates: Sequence[Atoms], reference: Sequence[Atoms] | None = None
    ) -> list[int]:
        """Indices into ``candidates``, in draw order; ``reference`` is checked, then ignored."""
        cands = as_frames(candidates, "candidates")
        as_frames(reference, "reference")
        rng = np.random.default_rng(self.seed)
        return rng.permutation(len(cands))[: min(self.n_target, len(cands))].tolist()
