"""ASE calculators: trained PFD models (:class:`PFDCalculator`), labelers (:func:`make_labeler`)
and :class:`DHMonitor` (any calculator plus the per-atom dH against a training set).

Imports are lazy so that ``import pfd_ase.calculators`` does not load torch or deepmd-kit.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "PFDCalculator": "pfd_ase.calculators.pfd",
    "DHMonitor": "pfd_ase.calculators.dh_monitor",
    "list_heads": "pfd_ase.models",
    "resolve_model": "pfd_ase.models",
    "ModelSpec": "pfd_ase.models",
    "make_labeler": "pfd_ase.calculators.labelers",
    "labeler_info": "pfd_ase.calculators.labelers",
    "check_vasp_setup": "pfd_ase.calculators.labelers",
    "LabelerSetupError": "pfd_ase.calculators.labelers",
    "VASP_DEFAULTS": "pfd_ase.calculators.labelers",
    "GPAW_DEFAULTS": "pfd_ase.calculators.labelers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
