"""Local structure of a configuration: coordination, sp³ fraction, radial distribution.

:func:`coordination_numbers` counts neighbours within a cutoff (ASE's neighbour list),
:func:`sp3_fraction` the share of four-coordinated atoms of an element (the usual
measure of amorphous carbon), :func:`radial_distribution` averages g(r) over frames with
ASE's :func:`ase.geometry.rdf.get_rdf` and :func:`plot_rdf` draws several.
:func:`melt_quench` makes an amorphous structure with any calculator: Langevin MD at a melt
temperature, a linear quench, a relaxation.

Units: Å.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

__all__ = [
    "CARBON_BOND_CUTOFF_A",
    "coordination_numbers",
    "melt_quench",
    "plot_rdf",
    "radial_distribution",
    "sp3_fraction",
]

#: Neighbour cutoff of carbon, Å: between the C-C bond (1.42-1.54 Å) and the second
#: neighbours (2.46-2.52 Å); 1.85 Å is the cutoff used in most a-C studies.
CARBON_BOND_CUTOFF_A = 1.85


def coordination_numbers(atoms: Atoms, cutoff_A: float) -> np.ndarray:
    """Neighbours of each atom within ``cutoff_A`` (periodic images included)."""
    from ase.neighborlist import neighbor_list

    if cutoff_A <= 0:
        raise ValueError(f"cutoff_A must be positive, got {cutoff_A}")
    i = neighbor_list("i", atoms, cutoff_A)
    return np.bincount(i, minlength=len(atoms))


def sp3_fraction(atoms: Atoms, cutoff_A: float = CARBON_BOND_CUTOFF_A, symbol: str = "C") -> float:
    """Share of ``symbol`` atoms with exactly four neighbours within ``cutoff_A``."""
    mask = np.array([s == symbol for s in atoms.get_chemical_symbols()])
    if not mask.any():
        raise ValueError(f"no {symbol} in {atoms.get_chemical_formula()}")
    return float(np.mean(coordination_numbers(atoms, cutoff_A)[mask] == 4))


def radial_distribution(
    frames: Atoms | Iterable[Atoms], rmax_A: float, nbins: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """g(r) averaged over ``frames`` up to ``rmax_A``: ``(r, g)``, bin centres in Å.

    A periodic frame whose cell is thinner than ``2 rmax_A`` in some direction is repeated
    until it is not (the g(r) of a crystal's supercell is its own)."""
    from ase.geometry.rdf import get_rdf

    frames = [frames] if isinstance(frames, Atoms) else list(frames)
    if not frames:
        raise ValueError("no frames")
    if rmax_A <= 0 or nbins < 1:
        raise ValueError("rmax_A must be positive and nbins at least 1")

    def large_enough(atoms: Atoms) -> Atoms:
        if not atoms.pbc.all():
            return atoms
        heights = atoms.cell.volume / np.linalg.norm(
            np.cross(atoms.cell[[1, 2, 0]], atoms.cell[[2, 0, 1]]), axis=1
        )
        repeats = [int(n) for n in np.ceil(2 * rmax_A / heights + 1e-9)]
        return atoms.repeat(repeats) if max(repeats) > 1 else atoms

    frames = [large_enough(a) for a in frames]
    g, r = get_rdf(frames, rmax_A, nbins)
    return np.asarray(r), np.asarray(g)


def melt_quench(
    atoms: Atoms,
    calc: Any,
    melt_K: float = 5000.0,
    final_K: float = 300.0,
    melt_steps: int = 500,
    quench_steps: int = 1000,
    timestep_fs: float = 1.0,
    friction_per_fs: float = 0.01,
    relax_steps: int = 200,
    fmax_eV_A: float = 0.05,
    seed: int = 0,
) -> tuple[Atoms, dict[str, Any]]:
    """Melt ``atoms`` (never modified) and quench it with ``calc`` at fixed cell.

    Langevin MD (``np.random.default_rng(seed)``) for ``melt_steps`` at ``melt_K``, then
    ``quench_steps`` with the temperature lowered linearly to ``final_K`` (a quench rate of
    (melt_K − final_K) / (quench_steps · timestep_fs) K/fs), then a BFGS relaxation of the
    positions.

    Returns
    -------
    (Atoms, dict)
        The quenched structure (no calculator) and ``energy_eV_atom`` (relaxed),
        ``quench_rate_K_fs``, ``relax_converged``, ``relax_steps``, ``min_distance_A``.
    """
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.optimize import BFGS
    from ase.units import fs

    if min(melt_steps, quench_steps, relax_steps) < 0 or timestep_fs <= 0:
        raise ValueError("step counts must be >= 0 and timestep_fs positive")
    if melt_K <= 0 or final_K <= 0:
        raise ValueError("temperatures must be positive (K)")
    rng = np.random.default_rng(seed)
    work = atoms.copy()
    work.calc = calc
    MaxwellBoltzmannDistribution(work, temperature_K=melt_K, rng=rng)
    dyn = Langevin(
        work,
        timestep_fs * fs,
        temperature_K=melt_K,
        friction=friction_per_fs / fs,
        fixcm=False,  # ASE's fixcm=True is deprecated; a drifting centre does no harm here
        rng=rng,
    )
    dyn.run(melt_steps)
    block = max(1, quench_steps // 50)
    done = 0
    while done < quench_steps:
        n = min(block, quench_steps - done)
        t = melt_K + (final_K - melt_K) * (done + n) / quench_steps
        dyn.set_temperature(temperature_K=t)
        dyn.run(n)
        done += n
    opt = BFGS(work, logfile=None)
    converged = bool(opt.run(fmax=fmax_eV_A, steps=relax_steps))
    energy = float(work.get_potential_energy()) / len(work)
    work.calc = None
    d = work.get_all_distances(mic=True)[np.triu_indices(len(work), 1)] if len(work) > 1 else []
    return work, {
        "energy_eV_atom": energy,
        "quench_rate_K_fs": (melt_K - final_K) / max(quench_steps * timestep_fs, 1e-12),
        "relax_converged": converged,
        "relax_steps": int(opt.nsteps),
        "min_distance_A": float(np.min(d)) if len(d) else None,
    }


def plot_rdf(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """g(r) of several subjects (name → ``(r, g)``) on one PNG; returns its path."""
    from pfd_ase.analysis.figures import new_figure

    fig = new_figure((6.0, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for name, (r, g) in curves.items():
        ax.plot(r, g, label=name)
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("g(r)")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
