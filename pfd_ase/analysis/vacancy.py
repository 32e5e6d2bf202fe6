"""Vacancy formation energies: one supercell, a series of phases, and checks of the results.

:func:`vacancy_formation_energy` relaxes a vacancy in a supercell with any ASE calculator
and returns E_f = E_vac − (N−1)/N · E_bulk, or E_f = E_vac − E_bulk + μ with a chemical
potential μ (e.g. diamond Si's energy per atom as the reference for every Si phase).
:func:`vacancy_series` does it for several phases with one calculator,
:func:`vacancy_supercells` builds their supercells (the paper's Si sizes from
:mod:`pfd_ase.materials`, or small ones for quick runs), :func:`vacancy_flags` says why a
value should not be read as a result (unphysical, unconverged, extrapolated) and
:func:`plot_vacancy_bars` draws a grouped bar chart per phase and model.

Units: eV and Å.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

__all__ = [
    "PHYSICAL_FORMATION_ENERGY_EV",
    "plot_vacancy_bars",
    "vacancy_flags",
    "vacancy_formation_energy",
    "vacancy_series",
    "vacancy_supercells",
]

#: Range (eV) outside which a vacancy formation energy is flagged as unphysical: a negative
#: one means the model prefers the defective crystal, above 10 eV no known solid.
PHYSICAL_FORMATION_ENERGY_EV: tuple[float, float] = (0.0, 10.0)


def vacancy_supercells(
    phases: Mapping[str, Atoms],
    quick: bool = False,
    sizes: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Atoms]:
    """Perfect supercells for vacancy calculations, one per phase in ``phases``.

    Parameters
    ----------
    phases
        Conventional cells by phase name (e.g. :func:`pfd_ase.materials.silicon_phases`).
    quick
        Take the ``"quick"`` sizes (8–32 atoms) instead of ``"full"`` ones.
    sizes
        ``{"full": {phase: size}, "quick": {...}}``, each size as in
        :func:`pfd_ase.materials.supercell`; default
        :data:`pfd_ase.materials.SILICON_VACANCY_SUPERCELLS` (the paper's Si sizes). Phases
        it lacks are repeated until every perpendicular cell height is at least 10 Å (7 Å
        with ``quick``).

    Returns
    -------
    dict
        Phase name to supercell (new objects, no calculator).
    """
    from pfd_ase.materials import SILICON_VACANCY_SUPERCELLS, supercell

    table = (SILICON_VACANCY_SUPERCELLS if sizes is None else sizes)["quick" if quick else "full"]
    out = {}
    for name, atoms in phases.items():
        spec = table.get(name)
        if spec is None:
            heights = 1.0 / np.linalg.norm(np.linalg.inv(np.array(atoms.cell)), axis=0)
            spec = tuple(int(n) for n in np.maximum(1, np.ceil((7.0 if quick else 10.0) / heights)))
        out[name] = supercell(atoms, spec)
    return out


def _relax(atoms: Atoms, fmax: float, max_steps: int, relax_cell: bool) -> tuple[float, bool, int]:
    """Relax ``atoms`` in place (calculator attached); energy, converged, steps."""
    from ase.optimize import BFGS

    forces = atoms.get_forces()
    fmax_now = float(np.sqrt((forces**2).sum(axis=1)).max()) if len(atoms) else 0.0
    if not relax_cell and fmax_now < fmax:
        return float(atoms.get_potential_energy()), True, 0
    target: Any = atoms
    if relax_cell:
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(atoms)
    opt = BFGS(target, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=max_steps))
    return float(atoms.get_potential_energy()), converged, int(opt.nsteps)


def vacancy_formation_energy(
    supercell: Atoms,
    calc: Any,
    mu_eV: float | None = None,
    index: int = 0,
    relax: bool = True,
    fmax_eV_A: float = 0.02,
    max_steps: int = 200,
    relax_cell: bool = False,
) -> dict[str, Any]:
    """Formation energy of a single vacancy in ``supercell`` (never modified).

    Parameters
    ----------
    supercell
        The perfect supercell of N atoms.
    calc
        Any ASE calculator, attached to copies.
    mu_eV
        Chemical potential of the removed atom, eV. ``None``: E_f = E_vac − (N−1)/N ·
        E_bulk (the phase's own energy per atom); otherwise E_f = E_vac − E_bulk + μ
        (e.g. diamond Si's energy per atom for every Si phase).
    index
        The atom removed.
    relax
        Relax positions (BFGS) of the perfect supercell (skipped when its forces are
        already below ``fmax_eV_A``) and of the vacancy supercell.
    fmax_eV_A
        Force convergence criterion, eV/Å.
    max_steps
        Cap on optimizer steps per relaxation.
    relax_cell
        Also relax the cell of both structures (zero-pressure formation energy).

    Returns
    -------
    dict
        JSON-safe: ``E_f_eV``, ``E_bulk_eV``, ``E_vac_eV``, ``n_atoms`` (N, perfect cell),
        ``mu_eV`` (the value used: given, or E_bulk/N), ``reference`` (``"bulk"`` or
        ``"mu"``), ``index``, ``relaxed``, ``converged`` (both relaxations), ``steps``
        (vacancy relaxation), ``steps_bulk``, ``converged_bulk``.
    """
    n = len(supercell)
    if n < 2:
        raise ValueError("a vacancy needs a supercell of at least 2 atoms")
    if not -n <= index < n:
        raise IndexError(f"index {index} out of range for {n} atoms")
    if fmax_eV_A <= 0 or max_steps < 0:
        raise ValueError("fmax_eV_A must be positive and max_steps non-negative")

    bulk = supercell.copy()
    bulk.calc = calc
    if relax:
        e_bulk, conv_bulk, steps_bulk = _relax(bulk, fmax_eV_A, max_steps, relax_cell)
    else:
        e_bulk, conv_bulk, steps_bulk = float(bulk.get_potential_energy()), True, 0

    vac = bulk.copy()  # relaxed perfect crystal, calculator detached by copy()
    del vac[index]
    vac.calc = calc
    if relax:
        e_vac, conv_vac, steps_vac = _relax(vac, fmax_eV_A, max_steps, relax_cell)
    else:
        e_vac, conv_vac, steps_vac = float(vac.get_potential_energy()), True, 0
    bulk.calc = None
    vac.calc = None

    if mu_eV is None:
        mu = e_bulk / n
        e_f = e_vac - (n - 1) / n * e_bulk
        reference = "bulk"
    else:
        mu = float(mu_eV)
        e_f = e_vac - e_bulk + mu
        reference = "mu"
    return {
        "E_f_eV": float(e_f),
        "E_bulk_eV": float(e_bulk),
        "E_vac_eV": float(e_vac),
        "n_atoms": n,
        "mu_eV": float(mu),
        "reference": reference,
        "index": int(index),
        "relaxed": bool(relax),
        "relax_cell": bool(relax_cell),
        "converged": bool(conv_bulk and conv_vac),
        "converged_bulk": bool(conv_bulk),
        "steps": int(steps_vac),
        "steps_bulk": int(steps_bulk),
    }


def vacancy_series(
    cells: Mapping[str, Atoms],
    calc: Any,
    reference: Atoms | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """:func:`vacancy_formation_energy` of each supercell in ``cells`` with one calculator.

    Parameters
    ----------
    cells
        Perfect supercells by phase name (e.g. from :func:`vacancy_supercells`).
    calc
        Any ASE calculator.
    reference
        A structure whose energy per atom (unrelaxed, with ``calc``) is the chemical
        potential μ of every phase, e.g. diamond Si; ``None``: each phase's own bulk.
    **kwargs
        Passed to :func:`vacancy_formation_energy` (``max_steps``, ``fmax_eV_A`` ...).

    Returns
    -------
    dict
        Phase name to the :func:`vacancy_formation_energy` result, in the order of ``cells``.
    """
    mu = None
    if reference is not None:
        ref = reference.copy()
        ref.calc = calc
        mu = ref.get_potential_energy() / len(ref)
    return {
        phase: vacancy_formation_energy(cell, calc, mu_eV=mu, **kwargs)
        for phase, cell in cells.items()
    }


def vacancy_flags(
    result: Mapping[str, Any],
    trained_on: Collection[str] | None = None,
    phase: str | None = None,
    physical_range_eV: tuple[float, float] = PHYSICAL_FORMATION_ENERGY_EV,
) -> list[str]:
    """Reasons not to read a vacancy formation energy as a result (empty: none found).

    Parameters
    ----------
    result
        A :func:`vacancy_formation_energy` result (``E_f_eV``, ``converged``).
    trained_on
        The structures the model was trained on; with ``phase``, a phase outside them is
        flagged as an extrapolation. ``None``: not checked (e.g. for the DFT reference).
    phase
        The phase of ``result``.
    physical_range_eV
        E_f outside ``(low, high)`` (or not finite) is flagged as unphysical.

    Returns
    -------
    list of str
        ``"unphysical"``, ``"not converged"``, ``"extrapolation"``, in that order.
    """
    flags = []
    e_f = result.get("E_f_eV")
    low, high = physical_range_eV
    if e_f is None or not np.isfinite(e_f) or not low < e_f < high:
        flags.append("unphysical")
    if not result.get("converged", True):
        flags.append("not converged")
    if trained_on is not None and phase is not None and phase not in trained_on:
        flags.append("extrapolation")
    return flags


def plot_vacancy_bars(
    results: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike,
    title: str | None = None,
    flagged: Mapping[str, Collection[str]] | None = None,
) -> Path:
    """Grouped bar chart of vacancy formation energies: phases on x, one bar per model.

    Parameters
    ----------
    results
        Model → phase → E_f (eV), e.g. ``{"PF": {"diamond": 3.6, ...}, "PFD": {...},
        "DFT": {...}}``; a phase a model lacks leaves a gap.
    path
        The PNG to write.
    title
        Figure title.
    flagged
        Model → phases whose values are not results (see :func:`vacancy_flags`): drawn
        hatched and pale.

    Returns
    -------
    Path
        ``path``.
    """
    from pfd_ase.analysis.figures import new_figure

    if not results:
        raise ValueError("nothing to plot")
    phases: list[str] = []
    for per_model in results.values():
        for phase in per_model:
            if phase not in phases:
                phases.append(phase)
    fig = new_figure((max(5.0, 1.1 * len(phases) + 2), 4))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(phases))
    width = 0.8 / len(results)
    for i, (model, per_model) in enumerate(results.items()):
        values = [per_model.get(p, np.nan) for p in phases]
        values = [np.nan if v is None else float(v) for v in values]
        bars = ax.bar(
            x + (i - (len(results) - 1) / 2) * width, values, width, label=model, color=f"C{i}"
        )
        for bar, phase in zip(bars, phases, strict=True):
            if phase in (flagged or {}).get(model, ()):
                bar.set_hatch("//")
                bar.set_alpha(0.4)
    ax.set_xticks(x)
    ax.set_xticklabels(phases)
    ax.axhline(0.0, color="0.5", linewidth=0.6)
    ax.set_ylabel("Vacancy formation energy (eV)")
    if any((flagged or {}).values()):
        ax.text(0.01, 0.01, "hatched: flagged, not a result", transform=ax.transAxes, fontsize=7)
    if title:
        ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    return out
