"""Labelers with what a system needs on top: DFT-D3 dispersion, a vacuum box for molecules.

:func:`pfd_ase.calculators.make_labeler` builds these from its ``dispersion`` and ``vacuum_A``
settings; each wraps the labeler's own calculator and keeps its provenance (the labeler's
name and settings, with the correction added to the settings).

- :class:`DispersionCorrected`: the labeler's energy, forces and stress plus DFT-D3's (the
  ``dftd3`` package, Grimme's D3 with zero or Becke-Johnson damping for the labeler's
  functional). VASP gets its own ``IVDW`` tag instead (see ``make_labeler``).
- :class:`InVacuum`: a non-periodic frame (``pbc`` all false; a molecule, which may have no
  cell) is given a box ``vacuum_A`` wider than the atoms on every side, centred, before the
  labeler sees it: plane-wave and real-space codes (VASP, GPAW) need a cell. The energy and
  forces do not depend on where the molecule sits; periodic frames pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

__all__ = ["DISPERSION_DAMPINGS", "DispersionCorrected", "InVacuum"]

#: Dispersion corrections by name → ``dftd3`` damping and VASP's ``IVDW`` tag.
DISPERSION_DAMPINGS: dict[str, dict[str, Any]] = {
    "d3bj": {"damping": "d3bj", "ivdw": 12},
    "d3zero": {"damping": "d3zero", "ivdw": 11},
}


class _Wrapped(Calculator):
    """A calculator computed by another, with the other's name and settings as provenance."""

    def __init__(
        self, inner: Any, extra: dict[str, Any], provenance: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.inner = inner
        self.implemented_properties = list(
            getattr(inner, "implemented_properties", ("energy", "forces"))
        )
        if provenance is None:  # the calculator's own name and parameters
            name = getattr(inner, "name", None)
            settings = dict(getattr(inner, "parameters", None) or {})
            provenance = {"name": name or type(inner).__name__, "settings": settings}
        self._labeler_name = str(provenance["name"])
        self.parameters.update(provenance["settings"])
        self.parameters.update(extra)

    @property
    def name(self) -> str:  # type: ignore[override]
        """The wrapped labeler's name (provenance: :func:`~pfd_ase.calculators.labeler_info`)."""
        return self._labeler_name

    @property
    def converged(self) -> Any:
        """The wrapped calculator's own ``converged`` flag (ASE's Vasp sets one)."""
        return getattr(self.inner, "converged", None)

    def _inner_results(self, atoms: Atoms, properties: Sequence[str]) -> dict[str, Any]:
        work = atoms.copy()
        work.calc = self.inner
        out: dict[str, Any] = {"energy": float(self.inner.get_potential_energy(work))}
        try:
            out["free_energy"] = float(self.inner.get_property("free_energy", work))
        except Exception:  # no free energy: the plain one
            out["free_energy"] = out["energy"]
        if "forces" in properties:
            out["forces"] = np.array(self.inner.get_forces(work), dtype=float)
        if "stress" in properties and work.pbc.all():
            out["stress"] = np.array(self.inner.get_stress(work), dtype=float)
        return out


class DispersionCorrected(_Wrapped):
    """A labeler plus DFT-D3 (``dftd3`` package) for its functional.

    Parameters
    ----------
    inner
        The labeler (e.g. GPAW).
    dispersion
        ``"d3bj"`` (Becke-Johnson damping) or ``"d3zero"`` (:data:`DISPERSION_DAMPINGS`).
    functional
        The D3 parametrisation (``"PBE"``), normally the labeler's exchange-correlation.
    provenance
        ``{"name", "settings"}`` of ``inner`` as recorded with each frame
        (:func:`~pfd_ase.calculators.labeler_info`; default: its ``name`` and
        ``parameters``); the correction's settings are added.
    """

    def __init__(
        self,
        inner: Any,
        dispersion: str = "d3bj",
        functional: str = "PBE",
        provenance: dict[str, Any] | None = None,
    ) -> None:
        if dispersion not in DISPERSION_DAMPINGS:
            raise ValueError(
                f"unknown dispersion {dispersion!r}; known: {sorted(DISPERSION_DAMPINGS)}"
            )
        try:
            from dftd3.ase import DFTD3
        except ImportError as exc:
            raise ImportError(
                "DFT-D3 needs the dftd3 package: pip install 'pfd_ase[molecules]'"
            ) from exc
        extra = {"dispersion": {"name": dispersion, "functional": functional}}
        super().__init__(inner, extra, provenance)
        self.d3 = DFTD3(method=functional, damping=DISPERSION_DAMPINGS[dispersion]["damping"])

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        results = self._inner_results(self.atoms, properties)
        work = self.atoms.copy()
        work.calc = self.d3
        e_d3 = float(work.get_potential_energy())
        results["energy"] += e_d3
        results["free_energy"] += e_d3
        if "forces" in results:
            results["forces"] += work.get_forces()
        if "stress" in results:
            results["stress"] += work.get_stress()
        self.results = results


class InVacuum(_Wrapped):
    """A labeler that sees every non-periodic frame in a box ``vacuum_A`` wider than it.

    Parameters
    ----------
    inner
        The labeler.
    vacuum_A
        Vacuum on each side of the molecule, Å (6-8 Å converges the energy of a neutral
        molecule in GPAW and VASP to a few meV).
    provenance
        As for :class:`DispersionCorrected`.
    """

    def __init__(
        self, inner: Any, vacuum_A: float = 6.0, provenance: dict[str, Any] | None = None
    ) -> None:
        if not vacuum_A > 0:
            raise ValueError(f"vacuum_A must be positive, got {vacuum_A}")
        super().__init__(inner, {"vacuum_A": float(vacuum_A)}, provenance)
        self.vacuum_A = float(vacuum_A)

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        work = self.atoms.copy()
        if not work.pbc.any():
            work.set_cell(np.ptp(work.positions, axis=0) + 2 * self.vacuum_A)
            work.center()
        self.results = self._inner_results(work, properties)
