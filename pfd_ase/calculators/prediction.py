"""What a model back-end returns, and what :class:`~pfd_ase.calculators.PFDCalculator` needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from ase import Atoms

__all__ = ["ModelBackend", "Prediction"]


@dataclass
class Prediction:
    """One model's prediction for one structure.

    Attributes
    ----------
    energy
        Total energy (eV).
    forces
        Forces (eV/Å), shape ``(n, 3)``.
    energies
        Per-atom energies (eV) or ``None`` when not asked for.
    virial
        Virial ``-σ·V`` (eV, 3×3) of a periodic cell, else ``None``.
    """

    energy: float
    forces: np.ndarray
    energies: np.ndarray | None
    virial: np.ndarray | None = None


class ModelBackend(Protocol):
    """What PFDCalculator needs from a model."""

    type_map: list[str]

    def evaluate(self, atoms: Atoms, atomic: bool = True) -> Prediction: ...
