"""pfd_ase.analysis: validation and applications of trained models.

- :mod:`pfd_ase.analysis.phonons`: phonon dispersions by finite displacements with phonopy
  (:func:`phonon_bands`, :func:`plot_phonon_bands`).
- :mod:`pfd_ase.analysis.vacancy`: vacancy formation energies and the Si phases
  (:func:`vacancy_formation_energy`, :func:`silicon_phases`, :func:`vacancy_supercells`,
  :func:`plot_vacancy_bars`).

phonopy and matplotlib are imported only when used.
"""

from __future__ import annotations

from pfd_ase.analysis.phonons import phonon_bands, plot_phonon_bands
from pfd_ase.analysis.vacancy import (
    plot_vacancy_bars,
    silicon_phases,
    vacancy_formation_energy,
    vacancy_supercells,
)

__all__ = [
    "phonon_bands",
    "plot_phonon_bands",
    "plot_vacancy_bars",
    "silicon_phases",
    "vacancy_formation_energy",
    "vacancy_supercells",
]
