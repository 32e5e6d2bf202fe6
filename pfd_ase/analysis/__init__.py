"""pfd_ase.analysis: validation and applications of trained models.

- :mod:`pfd_ase.analysis.phonons`: phonon dispersions by finite displacements with phonopy
  (:func:`phonon_bands`, :func:`plot_phonon_bands`, :func:`phonon_labeler`).
- :mod:`pfd_ase.analysis.vacancy`: vacancy formation energies (:func:`vacancy_formation_energy`,
  :func:`vacancy_series`, :func:`vacancy_supercells`, :func:`vacancy_flags`,
  :func:`plot_vacancy_bars`).
- :mod:`pfd_ase.analysis.validate`: models compared with each other and the labeler, for
  any recipe (:func:`model_errors`, :func:`compare_phonons`, :func:`compare_vacancies`,
  :func:`entropy_curve`, :func:`plot_entropy`).
- :mod:`pfd_ase.analysis.report`: the report folder (:func:`write_report`).
- :mod:`pfd_ase.analysis.diffusion`: MSD, diffusion coefficients, Arrhenius fits and
  Nernst-Einstein conductivities from any MD trajectory (import it as a module).
- :mod:`pfd_ase.analysis.phases`: phases of one compound relaxed under their symmetry, their
  energy ordering, and vacancies on every distinct site against a molecule's chemical
  potential (import it as a module).
- :mod:`pfd_ase.analysis.structure`: coordination numbers, the sp³ fraction and g(r) of
  configurations (import it as a module).

The structures (Si phases, LATP, BaTiO₃, amorphous carbon) are in
:mod:`pfd_ase.materials`. phonopy and matplotlib are imported only when used.
"""

from __future__ import annotations

from pfd_ase.analysis.phonons import phonon_bands, phonon_labeler, plot_phonon_bands
from pfd_ase.analysis.report import write_report
from pfd_ase.analysis.vacancy import (
    plot_vacancy_bars,
    vacancy_flags,
    vacancy_formation_energy,
    vacancy_series,
    vacancy_supercells,
)
from pfd_ase.analysis.validate import (
    Subject,
    compare_phonons,
    compare_vacancies,
    entropy_curve,
    model_errors,
    plot_entropy,
)

__all__ = [
    "Subject",
    "compare_phonons",
    "compare_vacancies",
    "entropy_curve",
    "model_errors",
    "phonon_bands",
    "phonon_labeler",
    "plot_entropy",
    "plot_phonon_bands",
    "plot_vacancy_bars",
    "vacancy_flags",
    "vacancy_formation_energy",
    "vacancy_series",
    "vacancy_supercells",
    "write_report",
]
