"""The held-out test set of a run: frames no model saw, labelled by the run's labeler.

A model is judged on frames it never saw. :func:`make_test_set` draws perturbed copies of
every structure of a run (each phase, the vacancy cell ...) from a random stream that no
training step uses (``np.random.default_rng([seed, TEST_SEED_SALT])``, where training draws
from ``default_rng(seed)`` and ``seed + iteration``); the recipe labels them with the run's
labeler into ``workdir/test`` and never adds them to the training data.
:func:`score_models` scores any models on them, overall and per structure, with a parity
plot each.

Energy errors are per atom after removing one least-squares constant per element (the
models' and the labeler's energy zeros may differ: a universal model's reference energies
are not the labeler's), and are also given without that shift; force errors over all
Cartesian components; stress errors over the 9 components of the 3×3 tensor, in GPa.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.units import GPa

from pfd_ase.data import FRAME_ID_KEY

__all__ = [
    "TEST_PREFIX",
    "TEST_SEED_SALT",
    "held_out_lines",
    "make_test_set",
    "score_models",
    "structure_of",
]

#: Frame ids of the test set: ``test.<structure>.<k>``.
TEST_PREFIX = "test"
#: Second entropy word of the test set's random stream (training uses ``seed`` alone).
TEST_SEED_SALT = 0x7E57


def make_test_set(
    structures: Mapping[str, Atoms],
    n_frames: int,
    seed: int,
    cell_strain: float = 0.03,
    displacement_A: float = 0.07,
) -> list[Atoms]:
    """``n_frames`` perturbed copies of each structure, from a stream training never draws.

    Parameters
    ----------
    structures
        Name → structure (e.g. every phase and the vacancy cell of a recipe).
    n_frames
        Copies per structure (positive).
    seed
        The run's seed; the copies come from ``np.random.default_rng([seed,
        TEST_SEED_SALT])``.
    cell_strain, displacement_A
        See :func:`pfd_ase.structures.perturb`; the default 0.07 Å is about the thermal
        displacement of Si at 500 K (the recipe's MD temperature).

    Returns
    -------
    list of Atoms
        Unlabelled frames with ``info["pfd_frame_id"] = "test.<name>.<k>"``.
    """
    from pfd_ase.structures import perturb

    if n_frames < 1:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    bad = [name for name in structures if not name or "." in name]
    if bad:
        raise ValueError(f"structure names must be non-empty and without '.': {bad}")
    rng = np.random.default_rng([seed, TEST_SEED_SALT])
    frames = []
    for name, atoms in structures.items():
        for k, new in enumerate(perturb(atoms, n_frames, rng, cell_strain, displacement_A)):
            new.info[FRAME_ID_KEY] = f"{TEST_PREFIX}.{name}.{k:03d}"
            frames.append(new)
    return frames


def structure_of(atoms: Atoms) -> str:
    """The structure a test frame was drawn from (from its id ``test.<name>.<k>``)."""
    frame_id = str(atoms.info.get(FRAME_ID_KEY, ""))
    parts = frame_id.split(".")
    if len(parts) != 3 or parts[0] != TEST_PREFIX:
        raise ValueError(f"not a test-set frame id: {frame_id!r}")
    return parts[1]


def _shift_per_element(frames: Sequence[Atoms], errors: np.ndarray) -> np.ndarray:
    """Least-squares constant per element removed from per-atom energy errors."""
    elements = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
    fractions = np.array(
        [[atoms.get_chemical_symbols().count(e) / len(atoms) for e in elements] for atoms in frames]
    )
    coef, *_ = np.linalg.lstsq(fractions, errors, rcond=None)
    return errors - fractions @ coef


def _rmse(values: Sequence[float], weights: Sequence[float] | None = None) -> float | None:
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return None
    w = np.ones_like(values) if weights is None else np.asarray(weights, dtype=float)
    return float(np.sqrt(np.sum(w * values**2) / np.sum(w)))


def _summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    stress = [r["stress_rmse"] for r in rows if r["stress_rmse"] is not None]
    out = {
        "n_frames": len(rows),
        "force_rmse_eV_A": _rmse([r["force_rmse"] for r in rows], [r["n_atoms"] for r in rows]),
        "energy_rmse_meV_atom": 1000 * _rmse([r["energy_shifted"] for r in rows]),
        "energy_rmse_raw_meV_atom": 1000 * _rmse([r["energy_error"] for r in rows]),
        "stress_rmse_GPa": None if not stress else _rmse(stress) / GPa,
    }
    return out


def score_models(
    models: Mapping[str, Any],
    frames: Sequence[Atoms],
    folder: str | os.PathLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Errors of each model on labelled test frames, overall and per structure.

    Parameters
    ----------
    models
        Name (``"base"``, ``"PF"``, ``"PFD"`` ...) → ASE calculator or model path
        (:func:`pfd_ase.training.evaluate.evaluate`).
    frames
        Labelled test frames (:func:`make_test_set` ids).
    folder
        Where ``parity_test_<name>.png`` go (none drawn when ``None``).

    Returns
    -------
    dict
        Name → ``force_rmse_eV_A``, ``energy_rmse_meV_atom`` (one constant per element
        removed), ``energy_rmse_raw_meV_atom``, ``energy_shift_meV_atom`` (the mean signed
        per-atom error), ``stress_rmse_GPa`` (``None`` without stress labels),
        ``n_frames`` and ``per_phase`` (structure → the same errors; the shift is the one
        fitted on the whole set).
    """
    from pfd_ase.training.evaluate import evaluate, parity_plot

    frames = list(frames)
    phases = [structure_of(atoms) for atoms in frames]
    out: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        result = evaluate(model, frames, return_predictions=True)
        if folder is not None:
            path = Path(folder) / f"parity_test_{name}.png"
            parity_plot(frames, result, path, title=f"{name} on the held-out test set")
        rows = [dict(r) for r in result["frames"]]
        shifted = _shift_per_element(frames, np.array([r["energy_error"] for r in rows]))
        for row, value, phase in zip(rows, shifted, phases, strict=True):
            row["energy_shifted"], row["phase"] = float(value), phase
        summary = _summary(rows)
        summary["energy_shift_meV_atom"] = 1000 * float(np.mean([r["energy_error"] for r in rows]))
        summary["per_phase"] = {
            phase: _summary([r for r in rows if r["phase"] == phase])
            for phase in dict.fromkeys(phases)
        }
        out[name] = summary
    return out


def held_out_lines(scores: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown tables of :func:`score_models`' result: errors overall, then force and energy
    RMSE per structure (models as columns)."""

    def fmt(value: Any, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    if not scores:
        return []
    names = list(scores)
    lines = [
        "| held-out test set | force RMSE (eV/Å) | energy RMSE, shift removed (meV/atom) "
        "| energy RMSE, raw (meV/atom) | stress RMSE (GPa) | frames |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in scores.items():
        lines.append(
            f"| {name} | {fmt(s['force_rmse_eV_A'], 3)} | {fmt(s['energy_rmse_meV_atom'], 1)} "
            f"| {fmt(s['energy_rmse_raw_meV_atom'], 1)} | {fmt(s['stress_rmse_GPa'], 2)} "
            f"| {s['n_frames']} |"
        )
    lines += [
        "",
        "| structure | " + " | ".join(f"{n} F (eV/Å), E (meV/atom)" for n in names) + " |",
    ]
    lines.append("|---" * (len(names) + 1) + "|")
    for phase in scores[names[0]]["per_phase"]:
        cells = []
        for name in names:
            p = scores[name]["per_phase"].get(phase, {})
            cells.append(
                f"{fmt(p.get('force_rmse_eV_A'), 3)}, {fmt(p.get('energy_rmse_meV_atom'), 1)}"
            )
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return [*lines, ""]
