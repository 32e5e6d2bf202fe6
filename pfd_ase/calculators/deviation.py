"""Force deviation between models: the committee deviation of
:class:`~pfd_ase.calculators.PFDCalculator` and the student–teacher deviation of distillation.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["force_deviation"]


def force_deviation(forces_stack: ArrayLike, reference: ArrayLike | None = None) -> np.ndarray:
    """Per-atom force deviation ``sqrt(<|F_m - F_ref|²>_m)`` of several models (eV/Å).

    Parameters
    ----------
    forces_stack
        Forces of ``n_models`` models on one structure, shape ``(n_models, n_atoms, 3)``
        (eV/Å).
    reference
        Forces the models are compared to, shape ``(n_atoms, 3)``. ``None``: the
        committee mean ``<F>`` (the DP-GEN model deviation of a committee). With one
        model and a reference (a student against its teacher) the deviation is the
        norm of the force error on each atom.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_atoms,)``; its maximum is the frame's max force deviation.
    """
    forces = np.asarray(forces_stack, dtype=float)
    if forces.ndim != 3 or forces.shape[-1] != 3:
        raise ValueError(f"forces_stack must have shape (n_models, n_atoms, 3), got {forces.shape}")
    if reference is None:
        ref = forces.mean(axis=0)
    else:
        ref = np.asarray(reference, dtype=float)
        if ref.shape != forces.shape[1:]:
            raise ValueError(f"reference must have shape {forces.shape[1:]}, got {ref.shape}")
    return np.sqrt(np.mean(np.sum((forces - ref) ** 2, axis=2), axis=0))
