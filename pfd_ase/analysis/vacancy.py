"""Vacancy formation energies, silicon phases and their vacancy supercells.

:func:`vacancy_formation_energy` relaxes a vacancy in a supercell with any ASE calculator
and returns E_f = E_vac − (N−1)/N · E_bulk, or E_f = E_vac − E_bulk + μ with a chemical
potential μ (e.g. diamond Si's energy per atom as the reference for every Si phase).
:func:`silicon_phases` builds the seven Si phases of the PFD silicon study and
:func:`vacancy_supercells` their supercells (the paper's sizes, or small ones for quick
runs). :func:`plot_vacancy_bars` draws a grouped bar chart per phase and model.

Units: eV and Å.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

__all__ = [
    "SILICON_LATTICE",
    "VACANCY_REPEATS",
    "plot_vacancy_bars",
    "silicon_phases",
    "vacancy_formation_energy",
    "vacancy_supercells",
]

#: Lattice parameters used by :func:`silicon_phases` (Å; near experiment / PBE at zero
#: pressure; diamond at the Stillinger-Weber minimum 5.431 Å).
SILICON_LATTICE: dict[str, dict[str, float]] = {
    "diamond": {"a": 5.431},
    "hex_diamond": {"a": 3.84, "c": 6.34},
    "fcc": {"a": 3.87},
    "bcc": {"a": 3.08},
    "hcp": {"a": 2.73, "c": 4.50},
    "beta_sn": {"a": 4.81, "c": 2.65},
    "bc8": {"a": 6.64, "x": 0.1003},
}

#: Supercell of each phase's cell from :func:`silicon_phases`: a 3×3 matrix or repeats,
#: ``"full"`` with the paper's atom counts (diamond 32, BC8 128, β-Sn 64, FCC 108,
#: hex-diamond 108, HCP 64; BCC 54, not in the paper) and ``"quick"`` with 8–32 atoms.
VACANCY_REPEATS: dict[str, dict[str, Any]] = {
    "full": {
        # 32 atoms: the body-centred-cubic shaped supercell of the 8-atom cube (4 cubes)
        "diamond": [[-1, 1, 1], [1, -1, 1], [1, 1, -1]],
        "bc8": (2, 2, 2),
        "beta_sn": (2, 2, 4),
        "fcc": (3, 3, 3),
        "hex_diamond": (3, 3, 3),
        "hcp": (4, 4, 2),
        "bcc": (3, 3, 3),
    },
    "quick": {
        "diamond": (1, 1, 1),
        "bc8": (1, 1, 1),
        "beta_sn": (1, 1, 4),
        "fcc": (2, 2, 2),
        "hex_diamond": (2, 2, 1),
        "hcp": (2, 2, 2),
        "bcc": (2, 2, 2),
    },
}


def silicon_phases() -> dict[str, Atoms]:
    """The Si phases of the PFD silicon study as conventional cells.

    Returns
    -------
    dict
        ``diamond`` (8 atoms, Fd-3m, 227), ``hex_diamond`` (lonsdaleite, 4 atoms,
        P6₃/mmc, 194), ``fcc`` (4 atoms, 225), ``bcc`` (2 atoms, 229), ``hcp`` (2 atoms,
        194), ``beta_sn`` (4 atoms, I4₁/amd, 141), ``bc8`` (16 atoms, Ia-3, 206), with the
        lattice parameters of :data:`SILICON_LATTICE`.
    """
    from ase.build import bulk
    from ase.spacegroup import crystal

    lat = SILICON_LATTICE
    phases = {
        "diamond": bulk("Si", "diamond", a=lat["diamond"]["a"], cubic=True),
        "hex_diamond": crystal(
            "Si",
            [(1 / 3, 2 / 3, 1 / 16)],
            spacegroup=194,
            cellpar=[lat["hex_diamond"]["a"]] * 2 + [lat["hex_diamond"]["c"], 90, 90, 120],
        ),
        "fcc": bulk("Si", "fcc", a=lat["fcc"]["a"], cubic=True),
        "bcc": bulk("Si", "bcc", a=lat["bcc"]["a"], cubic=True),
        "hcp": bulk("Si", "hcp", a=lat["hcp"]["a"], c=lat["hcp"]["c"]),
        "beta_sn": crystal(
            "Si",
            [(0.0, 0.0, 0.0)],
            spacegroup=141,
            cellpar=[lat["beta_sn"]["a"]] * 2 + [lat["beta_sn"]["c"], 90, 90, 90],
        ),
        "bc8": crystal(
            "Si",
            [(lat["bc8"]["x"],) * 3],
            spacegroup=206,
            cellpar=[lat["bc8"]["a"]] * 3 + [90, 90, 90],
        ),
    }
    out = {}
    for name, atoms in phases.items():
        clean = Atoms(
            atoms.get_chemical_symbols(),
            cell=atoms.cell,
            scaled_positions=atoms.get_scaled_positions(),
            pbc=True,
        )
        out[name] = clean
    return out


def vacancy_supercells(phases: Mapping[str, Atoms], quick: bool = False) -> dict[str, Atoms]:
    """Perfect supercells for vacancy calculations, one per phase in ``phases``.

    Phases named as in :func:`silicon_phases` get :data:`VACANCY_REPEATS` (the paper's
    sizes, or 8–32 atoms with ``quick``); other phases are repeated until every
    perpendicular cell height is at least 10 Å (7 Å with ``quick``).
    """
    from ase.build import make_supercell

    table = VACANCY_REPEATS["quick" if quick else "full"]
    out = {}
    for name, atoms in phases.items():
        spec = table.get(name)
        if spec is None:
            heights = 1.0 / np.linalg.norm(np.linalg.inv(np.array(atoms.cell)), axis=0)
            spec = tuple(int(n) for n in np.maximum(1, np.ceil((7.0 if quick else 10.0) / heights)))
        spec_arr = np.asarray(spec, dtype=int)
        if spec_arr.shape == (3,):
            sc = atoms.repeat(tuple(int(n) for n in spec_arr))
        else:
            sc = make_supercell(atoms, spec_arr)
        sc.calc = None
        out[name] = sc
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


def plot_vacancy_bars(
    results: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Grouped bar chart of vacancy formation energies: phases on x, one bar per model.

    ``results`` maps model → phase → E_f (eV), e.g. ``{"PF": {"diamond": 3.6, ...},
    "PFD": {...}, "DFT": {...}}``; a phase a model lacks leaves a gap. Returns the path.
    """
    from pfd_ase.analysis.phonons import _figure_tools

    if not results:
        raise ValueError("nothing to plot")
    Figure, FigureCanvasAgg = _figure_tools()
    phases: list[str] = []
    for per_model in results.values():
        for phase in per_model:
            if phase not in phases:
                phases.append(phase)
    fig = Figure(figsize=(max(5.0, 1.1 * len(phases) + 2), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(phases))
    width = 0.8 / len(results)
    for i, (model, per_model) in enumerate(results.items()):
        values = [per_model.get(p, np.nan) for p in phases]
        values = [np.nan if v is None else float(v) for v in values]
        ax.bar(x + (i - (len(results) - 1) / 2) * width, values, width, label=model, color=f"C{i}")
    ax.set_xticks(x)
    ax.set_xticklabels(phases)
    ax.axhline(0.0, color="0.5", linewidth=0.6)
    ax.set_ylabel("Vacancy formation energy (eV)")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    return out
