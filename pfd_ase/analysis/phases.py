"""Phases of one compound: relaxation under symmetry, energy ordering, point defects.

:func:`relax_phase` relaxes a structure keeping its space group (ASE's ``FixSymmetry``;
positions, and the cell too with ``relax_cell``), :func:`phase_energies` does it for every
phase with one calculator and returns the energies per formula unit, :func:`phase_ordering`
compares each model's ordering and energy differences with a reference's (the labeler).
:func:`molecule_chemical_potential` gives μ = ½ E(X₂) of a relaxed dimer (spin-polarised
where the calculator has spin), :func:`inequivalent_sites` the symmetry-distinct sites of an
element and :func:`site_vacancies` the formation energy of a vacancy on each of them
(:func:`pfd_ase.analysis.vacancy.vacancy_formation_energy`), the lowest reported.
:func:`atoms_record` and :func:`atoms_from_record` turn structures into JSON and back.

Units: eV, Å; energy differences between phases in meV per formula unit.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

__all__ = [
    "atoms_from_record",
    "atoms_record",
    "formula_units",
    "inequivalent_sites",
    "molecule_chemical_potential",
    "phase_energies",
    "phase_ordering",
    "plot_phase_energies",
    "relax_phase",
    "site_vacancies",
]


def atoms_record(atoms: Atoms) -> dict[str, Any]:
    """A JSON-safe record of a periodic structure: ``numbers``, ``cell``, ``scaled_positions``."""
    return {
        "numbers": [int(n) for n in atoms.numbers],
        "cell": np.asarray(atoms.cell, dtype=float).tolist(),
        "scaled_positions": atoms.get_scaled_positions().tolist(),
    }


def atoms_from_record(record: Mapping[str, Any]) -> Atoms:
    """The structure of :func:`atoms_record` (periodic, no calculator)."""
    return Atoms(
        numbers=record["numbers"],
        cell=record["cell"],
        scaled_positions=record["scaled_positions"],
        pbc=True,
    )


def formula_units(atoms: Atoms) -> int:
    """Formula units in ``atoms``: the greatest common divisor of its element counts."""
    _, counts = np.unique(atoms.numbers, return_counts=True)
    return int(reduce(math.gcd, (int(c) for c in counts)))


def _dataset(atoms: Atoms, symprec_A: float) -> Any:
    import spglib

    cell = (np.array(atoms.cell), atoms.get_scaled_positions(), atoms.numbers)
    with warnings.catch_warnings():  # spglib 2.5: a deprecation notice on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        return spglib.get_symmetry_dataset(cell, symprec=symprec_A)


def _number(dataset: Any) -> int | None:
    if dataset is None:
        return None
    return int(dataset["number"] if isinstance(dataset, dict) else dataset.number)


def relax_phase(
    atoms: Atoms,
    calc: Any,
    *,
    relax_cell: bool = False,
    fmax_eV_A: float = 0.01,
    max_steps: int = 200,
    symprec_A: float = 1e-3,
) -> tuple[Atoms, dict[str, Any]]:
    """Relax ``atoms`` (never modified) keeping its space group.

    Parameters
    ----------
    atoms
        The structure (its symmetry, found with ``symprec_A``, is kept).
    calc
        Any ASE calculator (stress needed with ``relax_cell``).
    relax_cell
        Relax the cell too (zero pressure), else the positions at the given cell.
    fmax_eV_A, max_steps
        BFGS convergence criterion (eV/Å; with the cell: the filter's generalised forces) and
        step cap.
    symprec_A
        spglib tolerance, Å, of ``FixSymmetry`` and of the space groups reported.

    Returns
    -------
    (Atoms, dict)
        The relaxed copy (no calculator) and ``energy_eV``, ``energy_fu_eV`` (per formula
        unit), ``n_fu``, ``converged``, ``steps``, ``spacegroup`` (before) and
        ``spacegroup_relaxed``, ``relax_cell`` and ``volume_fu_A3``.
    """
    from ase.constraints import FixSymmetry
    from ase.optimize import BFGS

    if fmax_eV_A <= 0 or max_steps < 0:
        raise ValueError("fmax_eV_A must be positive and max_steps non-negative")
    work = atoms.copy()
    work.calc = calc
    before = _number(_dataset(work, symprec_A))
    work.set_constraint(FixSymmetry(work, symprec=symprec_A))
    target: Any = work
    if relax_cell:
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(work)
    opt = BFGS(target, logfile=None)
    converged = bool(opt.run(fmax=fmax_eV_A, steps=max_steps))
    energy = float(work.get_potential_energy())
    work.set_constraint()
    work.calc = None
    n_fu = formula_units(work)
    return work, {
        "energy_eV": energy,
        "energy_fu_eV": energy / n_fu,
        "n_fu": n_fu,
        "converged": converged,
        "steps": int(opt.nsteps),
        "spacegroup": before,
        "spacegroup_relaxed": _number(_dataset(work, symprec_A)),
        "relax_cell": bool(relax_cell),
        "volume_fu_A3": float(work.get_volume() / n_fu),
    }


def phase_energies(
    phases: Mapping[str, Atoms], calc: Any, relax: bool = True, **kwargs: Any
) -> dict[str, Any]:
    """Energy per formula unit of each phase with one calculator, relaxed under symmetry.

    Parameters
    ----------
    phases
        Phase name → structure (the first is the reference of ``relative_meV_fu``).
    calc
        Any ASE calculator.
    relax
        Relax each phase (:func:`relax_phase`); ``False``: energies of the given structures.
    **kwargs
        Passed to :func:`relax_phase` (``relax_cell``, ``fmax_eV_A``, ``max_steps`` ...).

    Returns
    -------
    dict
        JSON-safe: ``phases`` (name → :func:`relax_phase`'s record with ``structure``, the
        :func:`atoms_record` of the relaxed structure), ``relative_meV_fu`` (name → energy
        per formula unit minus the first phase's, meV) and ``order`` (names, lowest energy
        first).
    """
    if not phases:
        raise ValueError("no phases given")
    records: dict[str, Any] = {}
    for name, atoms in phases.items():
        if relax:
            relaxed, record = relax_phase(atoms, calc, **kwargs)
        else:
            relaxed = atoms.copy()
            relaxed.calc = calc
            n_fu = formula_units(relaxed)
            energy = float(relaxed.get_potential_energy())
            relaxed.calc = None
            record = {"energy_eV": energy, "energy_fu_eV": energy / n_fu, "n_fu": n_fu}
        records[name] = {**record, "structure": atoms_record(relaxed)}
    first = next(iter(records.values()))["energy_fu_eV"]
    relative = {n: 1000.0 * (r["energy_fu_eV"] - first) for n, r in records.items()}
    return {
        "phases": records,
        "relative_meV_fu": relative,
        "order": sorted(relative, key=relative.__getitem__),
    }


def phase_ordering(
    results: Mapping[str, Mapping[str, Any]],
    expected: Sequence[str] | None = None,
    reference: str | None = "DFT",
) -> dict[str, Any]:
    """Each subject's phase ordering against the reference's and an expected order.

    Parameters
    ----------
    results
        Subject name → :func:`phase_energies` result.
    expected
        The known order, lowest energy first (e.g. rhombohedral < orthorhombic < tetragonal
        < cubic for BaTiO₃ in PBE at 0 K); ``None``: not checked.
    reference
        The subject whose energies the others' are compared with (absent: no comparison).

    Returns
    -------
    dict
        Subject name → ``order``, ``relative_meV_fu``, ``expected_order`` (bool, ``None``
        without ``expected``), ``same_order_as_reference`` (bool, ``None`` without one) and
        ``error_meV_fu`` (phase → its relative energy minus the reference's) with
        ``max_abs_error_meV_fu``.
    """
    ref = results.get(reference) if reference is not None else None
    out: dict[str, Any] = {}
    for name, res in results.items():
        rel = dict(res["relative_meV_fu"])
        entry: dict[str, Any] = {
            "order": list(res["order"]),
            "relative_meV_fu": rel,
            "expected_order": None if expected is None else list(res["order"]) == list(expected),
            "same_order_as_reference": None,
            "error_meV_fu": None,
            "max_abs_error_meV_fu": None,
        }
        if ref is not None and name != reference:
            common = [p for p in rel if p in ref["relative_meV_fu"]]
            errors = {p: rel[p] - ref["relative_meV_fu"][p] for p in common}
            entry["same_order_as_reference"] = [p for p in res["order"] if p in common] == [
                p for p in ref["order"] if p in common
            ]
            entry["error_meV_fu"] = errors
            entry["max_abs_error_meV_fu"] = max((abs(e) for e in errors.values()), default=None)
        out[name] = entry
    return out


def plot_phase_energies(
    ordering: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path | None:
    """Grouped bars of each subject's energy per formula unit relative to the first phase
    (meV), one group per phase (:func:`phase_ordering`'s result); ``None`` without data."""
    from pfd_ase.analysis.figures import new_figure

    if not ordering:
        return None
    phases = list(next(iter(ordering.values()))["relative_meV_fu"])
    width = 0.8 / len(ordering)
    fig = new_figure((6.5, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(phases))
    for k, (name, entry) in enumerate(ordering.items()):
        values = [entry["relative_meV_fu"].get(p, np.nan) for p in phases]
        ax.bar(x + (k - (len(ordering) - 1) / 2) * width, values, width, label=name)
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xticks(x, phases)
    ax.set_ylabel(f"E − E({phases[0]}) (meV/f.u.)")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def molecule_chemical_potential(
    calc: Any,
    symbols: str = "O2",
    bond_A: float = 1.21,
    magmom: float = 2.0,
    box_A: float = 10.0,
    relax: bool = True,
    fmax_eV_A: float = 0.02,
    max_steps: int = 50,
) -> dict[str, Any]:
    """μ = E(X₂)/2 of a homonuclear dimer in a periodic box, its bond relaxed.

    The dimer starts with ``magmom`` (μ_B, spread over its atoms: 2 for triplet O₂); a
    calculator without spin ignores it, a spin-polarised one (GPAW with ``spinpol``, VASP
    with ``ISPIN = 2``) starts from it.

    Returns
    -------
    dict
        ``mu_eV``, ``energy_eV``, ``bond_A`` (relaxed), ``magmom`` (the calculator's total
        moment, ``None`` where it has none), ``converged``, ``steps``.
    """
    from ase.optimize import BFGS

    dimer = Atoms(symbols, positions=[[0, 0, 0], [0, 0, bond_A]], cell=[box_A] * 3, pbc=True)
    if len(dimer) != 2 or len(set(dimer.numbers)) != 1:
        raise ValueError(f"a homonuclear dimer is needed, got {symbols!r}")
    dimer.center()
    dimer.set_initial_magnetic_moments([magmom / 2, magmom / 2])
    dimer.calc = calc
    converged, steps = True, 0
    if relax:
        opt = BFGS(dimer, logfile=None)
        converged = bool(opt.run(fmax=fmax_eV_A, steps=max_steps))
        steps = int(opt.nsteps)
    energy = float(dimer.get_potential_energy())
    try:
        moment: float | None = float(dimer.get_magnetic_moment())
    except Exception:  # noqa: BLE001 - a calculator without spin raises its own error
        moment = None
    bond = float(dimer.get_distance(0, 1, mic=True))
    dimer.calc = None
    return {
        "mu_eV": energy / 2,
        "energy_eV": energy,
        "bond_A": bond,
        "magmom": moment,
        "converged": converged,
        "steps": steps,
    }


def inequivalent_sites(atoms: Atoms, symbol: str, symprec_A: float = 1e-3) -> list[int]:
    """The first index of each symmetry-distinct site of ``symbol`` (spglib's
    equivalent atoms of ``atoms`` with ``symprec_A``), in index order."""
    from ase.data import atomic_numbers

    number = atomic_numbers[symbol]
    indices = np.flatnonzero(atoms.numbers == number)
    if len(indices) == 0:
        raise ValueError(f"no {symbol} in {atoms.get_chemical_formula()}")
    dataset = _dataset(atoms, symprec_A)
    if dataset is None:
        return [int(i) for i in indices]
    equivalent = np.asarray(
        dataset["equivalent_atoms"] if isinstance(dataset, dict) else dataset.equivalent_atoms
    )
    seen: dict[int, int] = {}
    for i in indices:
        seen.setdefault(int(equivalent[i]), int(i))
    return sorted(seen.values())


def site_vacancies(
    cell: Atoms,
    calc: Any,
    symbol: str,
    mu_eV: float,
    sites: Sequence[int] | None = None,
    symprec_A: float = 1e-3,
    **kwargs: Any,
) -> dict[str, Any]:
    """Vacancy formation energy E_f = E(cell − X) − E(cell) + μ_X on each distinct site.

    Parameters
    ----------
    cell
        The perfect supercell (relaxed; its positions are relaxed again only where their
        forces exceed ``fmax_eV_A``).
    calc
        Any ASE calculator.
    symbol
        The element removed.
    mu_eV
        Its chemical potential, eV (e.g. :func:`molecule_chemical_potential`).
    sites
        Indices to remove (default: :func:`inequivalent_sites` of ``symbol``).
    symprec_A
        Tolerance of :func:`inequivalent_sites`.
    **kwargs
        Passed to :func:`pfd_ase.analysis.vacancy.vacancy_formation_energy` (``relax``,
        ``fmax_eV_A``, ``max_steps``; no stability check: the phase was relaxed under its
        symmetry before).

    Returns
    -------
    dict
        ``sites`` (index → vacancy result), ``E_f_eV`` (the lowest; ``None`` when none has
        a value), ``site`` (its index), ``mu_eV``, ``n_atoms``.
    """
    from pfd_ase.analysis.vacancy import vacancy_formation_energy

    chosen = list(sites) if sites is not None else inequivalent_sites(cell, symbol, symprec_A)
    results = {
        str(i): vacancy_formation_energy(
            cell, calc, mu_eV=mu_eV, index=int(i), stability_check=False, **kwargs
        )
        for i in chosen
    }
    valued = {i: r["E_f_eV"] for i, r in results.items() if r["E_f_eV"] is not None}
    best = min(valued, key=valued.__getitem__) if valued else None
    return {
        "sites": results,
        "E_f_eV": None if best is None else valued[best],
        "site": None if best is None else int(best),
        "mu_eV": float(mu_eV),
        "n_atoms": len(cell),
    }
