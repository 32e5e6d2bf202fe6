"""Vacancy formation energies: one supercell, a series of phases, and checks of the results.

:func:`vacancy_formation_energy` relaxes a vacancy in a supercell with any ASE calculator
and returns E_f = E_vac − (N−1)/N · E_bulk, or E_f = E_vac − E_bulk + μ with a chemical
potential μ (e.g. diamond Si's energy per atom as the reference for every Si phase).
Before removing an atom it checks that the perfect cell is a stable minimum of the model
(:func:`perfect_cell_stability`: a rattled copy relaxed back to the same phase); a phase that
is not gets no E_f (``None``) but the reason. :func:`vacancy_series` does it for several
phases with one calculator,
:func:`vacancy_supercells` builds their supercells (the paper's Si sizes from
:mod:`pfd_ase.materials`, or small ones for quick runs), :func:`vacancy_flags` says why a
value should not be read as a result (unstable, unphysical, unconverged, extrapolated) and
:func:`plot_vacancy_bars` draws a grouped bar chart per phase and model.

Units: eV and Å.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

__all__ = [
    "PHYSICAL_FORMATION_ENERGY_EV",
    "STABILITY_CHECK",
    "perfect_cell_stability",
    "plot_vacancy_bars",
    "space_group",
    "stability_settings",
    "vacancy_flags",
    "vacancy_formation_energy",
    "vacancy_series",
    "vacancy_supercells",
]

#: Range (eV) outside which a vacancy formation energy is flagged as unphysical: a negative
#: one means the model prefers the defective crystal, above 10 eV no known solid.
PHYSICAL_FORMATION_ENERGY_EV: tuple[float, float] = (0.0, 10.0)

#: Default settings of :func:`perfect_cell_stability`: Gaussian displacements of
#: ``rattle_A`` (Å, standard deviation, random generator ``seed``) and, with cell relaxation,
#: a random symmetric strain of ``strain``; spglib tolerance ``symprec_A`` (Å, loose, so that
#: a relaxation that returns to within 0.1 Å keeps its space group); the largest relative
#: volume change ``max_volume_change`` and energy drop ``max_energy_drop_eV_atom`` (eV/atom,
#: about kT/13 at 300 K) of a phase that stays itself.
STABILITY_CHECK: dict[str, float] = {
    "rattle_A": 0.05,
    "strain": 0.01,
    "seed": 0,
    "symprec_A": 0.1,
    "max_volume_change": 0.15,
    "max_energy_drop_eV_atom": 0.002,
}


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


def space_group(atoms: Atoms, symprec_A: float = 0.1) -> int | None:
    """International space-group number of ``atoms`` (spglib), or ``None`` without spglib."""
    try:
        import spglib
    except ImportError:  # pragma: no cover - spglib comes with phonopy
        return None
    cell = (np.array(atoms.cell), atoms.get_scaled_positions(), atoms.numbers)
    with warnings.catch_warnings():  # spglib 2.5: a deprecation notice on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        dataset = spglib.get_symmetry_dataset(cell, symprec=symprec_A)
    if dataset is None:
        return None
    return int(dataset["number"] if isinstance(dataset, dict) else dataset.number)


def stability_settings(check: bool | Mapping[str, Any]) -> dict[str, Any] | None:
    """:data:`STABILITY_CHECK` updated with ``check`` (a mapping), or ``None`` when off."""
    if check is False or check is None:
        return None
    settings = dict(STABILITY_CHECK)
    if isinstance(check, Mapping):
        unknown = set(check) - set(settings)
        if unknown:
            raise ValueError(
                f"unknown stability settings {sorted(unknown)}; known: {sorted(settings)}"
            )
        settings.update(check)
    return settings


def perfect_cell_stability(
    supercell: Atoms,
    calc: Any,
    relaxed: Atoms | None = None,
    *,
    relax_cell: bool = False,
    fmax_eV_A: float = 0.02,
    max_steps: int = 200,
    rattle_A: float = 0.05,
    strain: float = 0.01,
    seed: int = 0,
    symprec_A: float = 0.1,
    max_volume_change: float = 0.15,
    max_energy_drop_eV_atom: float = 0.002,
) -> dict[str, Any]:
    """Whether a perfect cell is a mechanically stable minimum of a model, in its phase.

    Relaxing the symmetric cell alone proves nothing: the forces on a high-symmetry
    structure vanish by symmetry at a saddle point too (FCC Si under Stillinger-Weber
    stays FCC in a relaxation). So a copy of the relaxed cell is rattled (and strained,
    with ``relax_cell``) and relaxed the same way: a stable minimum comes back, an
    unstable structure falls into another one. The cell is unstable when

    - the space group (spglib, tolerance ``symprec_A``) of the relaxed cell or of the
      relaxed rattled copy differs from that of ``supercell``;
    - the rattled copy ends more than ``max_energy_drop_eV_atom`` below the relaxed cell;
    - with ``relax_cell``, the volume of either differs from that of ``supercell`` by more
      than ``max_volume_change`` (relative).

    A rattled relaxation stopped by ``max_steps`` counts only by its energy (its symmetry
    and volume are those of an unfinished relaxation); if that does not decide, the verdict
    is ``None``.

    Parameters
    ----------
    supercell
        The perfect cell as built (never modified): its space group and volume define the
        phase.
    calc
        Any ASE calculator.
    relaxed
        ``supercell`` already relaxed with ``calc`` (same ``relax_cell``); ``None``: relaxed
        here.
    relax_cell
        Relax the cell too (zero pressure); otherwise positions at fixed cell.
    fmax_eV_A, max_steps
        Relaxation settings, as for the vacancy.
    rattle_A, strain, seed, symprec_A, max_volume_change, max_energy_drop_eV_atom
        See :data:`STABILITY_CHECK`.

    Returns
    -------
    dict
        JSON-safe: ``stable`` (``True``, ``False``, or ``None`` when no criterion fired but
        the rattled relaxation hit ``max_steps``: undecided), ``reason`` (why unstable or
        undecided, else ``None``), ``space_group`` (of ``supercell``),
        ``space_group_relaxed``, ``space_group_rattled``, ``volume_change_relaxed`` and
        ``volume_change_rattled`` (relative to ``supercell``), ``energy_drop_eV_atom``
        (relaxed cell minus relaxed rattled copy, per atom; positive: the copy found a
        lower structure), ``converged``, ``steps`` (rattled relaxation) and ``settings``.
    """
    settings = {
        "rattle_A": float(rattle_A),
        "strain": float(strain),
        "seed": int(seed),
        "symprec_A": float(symprec_A),
        "max_volume_change": float(max_volume_change),
        "max_energy_drop_eV_atom": float(max_energy_drop_eV_atom),
    }
    n = len(supercell)
    if relaxed is None:
        relaxed = supercell.copy()
        relaxed.calc = calc
        _relax(relaxed, fmax_eV_A, max_steps, relax_cell)
    ref = relaxed.copy()
    ref.calc = calc
    e_ref = float(ref.get_potential_energy())

    rng = np.random.default_rng(seed)
    rattled = relaxed.copy()
    if relax_cell and strain > 0:
        eps = rng.normal(0.0, strain, (3, 3))
        rattled.set_cell(np.array(rattled.cell) @ (np.eye(3) + (eps + eps.T) / 2), scale_atoms=True)
    rattled.positions += rng.normal(0.0, rattle_A, rattled.positions.shape)
    rattled.calc = calc
    e_rattled, converged, steps = _relax(rattled, fmax_eV_A, max_steps, relax_cell)
    ref.calc = None
    rattled.calc = None

    v0 = supercell.get_volume()
    sg = space_group(supercell, symprec_A)
    sg_relaxed = space_group(relaxed, symprec_A)
    sg_rattled = space_group(rattled, symprec_A)
    dv_relaxed = relaxed.get_volume() / v0 - 1.0
    dv_rattled = rattled.get_volume() / v0 - 1.0
    drop = (e_ref - e_rattled) / n

    # a relaxation cut short says nothing by its symmetry or volume, only by a lower energy
    finals = [(sg_relaxed, dv_relaxed)] + ([(sg_rattled, dv_rattled)] if converged else [])
    reasons = []
    changed = [g for g, _ in finals if g != sg]
    if sg is not None and changed:
        reasons.append(f"space group {sg} → {changed[0]}")
    if drop > max_energy_drop_eV_atom:
        reasons.append(f"{1000 * drop:.1f} meV/atom lower")
    dv = max((v for _, v in finals), key=abs)
    if relax_cell and abs(dv) > max_volume_change:
        reasons.append(f"volume {100 * dv:+.0f} %")
    if reasons:
        stable: bool | None = False
        reason: str | None = f"{', '.join(reasons)} after relaxing a copy rattled by {rattle_A:g} Å"
    elif not converged:
        stable, reason = None, f"rattled relaxation not converged in {steps} steps"
    else:
        stable, reason = True, None
    return {
        "stable": stable,
        "reason": reason,
        "space_group": sg,
        "space_group_relaxed": sg_relaxed,
        "space_group_rattled": sg_rattled,
        "volume_change_relaxed": float(dv_relaxed),
        "volume_change_rattled": float(dv_rattled),
        "energy_drop_eV_atom": float(drop),
        "converged": bool(converged),
        "steps": int(steps),
        "settings": settings,
    }


def vacancy_formation_energy(
    supercell: Atoms,
    calc: Any,
    mu_eV: float | None = None,
    index: int = 0,
    relax: bool = True,
    fmax_eV_A: float = 0.02,
    max_steps: int = 200,
    relax_cell: bool = False,
    stability_check: bool | Mapping[str, Any] = True,
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
    stability_check
        Check with :func:`perfect_cell_stability` that the relaxed perfect cell is a stable
        minimum (``True``: :data:`STABILITY_CHECK`; a mapping: some of its settings
        changed; ``False``: no check). Only with ``relax``. An unstable perfect cell gets
        no vacancy: ``E_f_eV`` and ``E_vac_eV`` are ``None``.

    Returns
    -------
    dict
        JSON-safe: ``E_f_eV``, ``E_bulk_eV``, ``E_vac_eV``, ``n_atoms`` (N, perfect cell),
        ``mu_eV`` (the value used: given, or E_bulk/N), ``reference`` (``"bulk"`` or
        ``"mu"``), ``index``, ``relaxed``, ``converged`` (both relaxations), ``steps``
        (vacancy relaxation), ``steps_bulk``, ``converged_bulk``, ``stable`` (the check's
        verdict, ``None`` when undecided or not checked) and ``stability`` (its
        :func:`perfect_cell_stability` result, ``None`` when not checked).
    """
    n = len(supercell)
    if n < 2:
        raise ValueError("a vacancy needs a supercell of at least 2 atoms")
    if not -n <= index < n:
        raise IndexError(f"index {index} out of range for {n} atoms")
    if fmax_eV_A <= 0 or max_steps < 0:
        raise ValueError("fmax_eV_A must be positive and max_steps non-negative")

    settings = stability_settings(stability_check) if relax else None

    bulk = supercell.copy()
    bulk.calc = calc
    if relax:
        e_bulk, conv_bulk, steps_bulk = _relax(bulk, fmax_eV_A, max_steps, relax_cell)
    else:
        e_bulk, conv_bulk, steps_bulk = float(bulk.get_potential_energy()), True, 0
    stability = None
    if settings is not None:
        stability = perfect_cell_stability(
            supercell,
            calc,
            bulk,
            relax_cell=relax_cell,
            fmax_eV_A=fmax_eV_A,
            max_steps=max_steps,
            **settings,
        )
    mu = e_bulk / n if mu_eV is None else float(mu_eV)
    result = {
        "E_f_eV": None,
        "E_bulk_eV": float(e_bulk),
        "E_vac_eV": None,
        "n_atoms": n,
        "mu_eV": float(mu),
        "reference": "bulk" if mu_eV is None else "mu",
        "index": int(index),
        "relaxed": bool(relax),
        "relax_cell": bool(relax_cell),
        "converged": bool(conv_bulk),
        "converged_bulk": bool(conv_bulk),
        "steps": 0,
        "steps_bulk": int(steps_bulk),
        "stable": None if stability is None else stability["stable"],
        "stability": stability,
    }
    if stability is not None and stability["stable"] is False:
        bulk.calc = None
        return result  # no vacancy in a phase the model does not hold

    vac = bulk.copy()  # relaxed perfect crystal, calculator detached by copy()
    del vac[index]
    vac.calc = calc
    if relax:
        e_vac, conv_vac, steps_vac = _relax(vac, fmax_eV_A, max_steps, relax_cell)
    else:
        e_vac, conv_vac, steps_vac = float(vac.get_potential_energy()), True, 0
    bulk.calc = None
    vac.calc = None

    e_f = e_vac - (n - 1) / n * e_bulk if mu_eV is None else e_vac - e_bulk + mu
    result |= {
        "E_f_eV": float(e_f),
        "E_vac_eV": float(e_vac),
        "converged": bool(conv_bulk and conv_vac),
        "steps": int(steps_vac),
    }
    return result


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
        A :func:`vacancy_formation_energy` result (``E_f_eV``, ``converged``, ``stable``,
        ``stability``).
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
        In this order: ``"unstable"`` (the perfect cell is not a stable minimum of the
        model, see :func:`perfect_cell_stability`; there is no E_f), ``"unphysical"``,
        ``"not converged"``, ``"stability unknown"`` (the check's relaxation hit its step
        cap), ``"extrapolation"``.
    """
    flags = []
    unstable = result.get("stable") is False
    if unstable:
        flags.append("unstable")
    e_f = result.get("E_f_eV")
    low, high = physical_range_eV
    if not unstable and (e_f is None or not np.isfinite(e_f) or not low < e_f < high):
        flags.append("unphysical")
    if not result.get("converged", True):
        flags.append("not converged")
    if result.get("stability") is not None and result.get("stable") is None:
        flags.append("stability unknown")
    if trained_on is not None and phase is not None and phase not in trained_on:
        flags.append("extrapolation")
    return flags


def plot_vacancy_bars(
    results: Mapping[str, Mapping[str, float | None]],
    path: str | os.PathLike,
    title: str | None = None,
    flagged: Mapping[str, Collection[str]] | None = None,
    unstable: Mapping[str, Collection[str]] | None = None,
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
    unstable
        Model → phases whose perfect cell is unstable under the model: no bar, the word
        "unstable" in its place.

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
        gone = set((unstable or {}).get(model, ()))
        values = [np.nan if p in gone else per_model.get(p, np.nan) for p in phases]
        values = [np.nan if v is None else float(v) for v in values]
        xs = x + (i - (len(results) - 1) / 2) * width
        bars = ax.bar(xs, values, width, label=model, color=f"C{i}")
        for bar, phase in zip(bars, phases, strict=True):
            if phase in (flagged or {}).get(model, ()):
                bar.set_hatch("//")
                bar.set_alpha(0.4)
        for xi, phase in zip(xs, phases, strict=True):
            if phase in gone:  # no bar: the word, standing on the zero line
                ax.text(
                    xi,
                    0.0,
                    " unstable",
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    color=f"C{i}",
                )
    ax.set_xticks(x)
    ax.set_xlim(-0.5, len(phases) - 0.5)
    ax.set_xticklabels(phases)
    ax.axhline(0.0, color="0.5", linewidth=0.6)
    ax.set_ylabel("Vacancy formation energy (eV)")
    notes = []
    if any((flagged or {}).values()):
        notes.append("hatched: flagged, not a result")
    if any((unstable or {}).values()):
        notes.append("unstable: perfect cell not stable under the model, no value")
    if notes:
        ax.text(0.01, 0.01, "; ".join(notes), transform=ax.transAxes, fontsize=7)
    if title:
        ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    return out
