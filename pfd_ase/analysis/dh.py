"""dH as an error signal (PFD supplement Fig. S13): the differential entropy of each
held-out atom against a training set, beside the force error of each model on it.

:func:`dh_versus_error` computes, for every atom of labelled frames, dH (nats; QUESTS
descriptors through :class:`pfd_ase.selectors.DescriptorBank`) against the training frames
and ``|F_model - F_label|`` (eV/Å) of each model; :func:`error_statistics` gives Spearman's
rho and the error distributions below and above :data:`DH_THRESHOLD`;
:func:`plot_dh_versus_error` draws the scatter. Used by the recipes' reports and
``bench/dh_error.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

__all__ = [
    "DH_THRESHOLD",
    "dh_versus_error",
    "error_statistics",
    "per_atom_force_errors",
    "plot_dh_versus_error",
]

#: The supplement's dH line (nats): environments above it are new to the training set.
DH_THRESHOLD = 2.0


def per_atom_force_errors(calc: Any, frames: Sequence[Atoms]) -> np.ndarray:
    """``|F_model - F_label|`` of every atom of every frame (eV/Å), frame then atom order."""
    from pfd_ase.training.evaluate import predict, reference_labels

    preds = predict(calc, list(frames), stress=False)
    refs = reference_labels(list(frames))
    return np.concatenate(
        [
            np.linalg.norm(p["forces"] - r["forces"], axis=1)
            for p, r in zip(preds, refs, strict=True)
        ]
    )


def _atom_structures(frames: Sequence[Atoms]) -> list[str]:
    from pfd_ase.analysis.testset import structure_of

    out: list[str] = []
    for atoms in frames:
        try:
            name = structure_of(atoms)
        except ValueError:
            name = "?"
        out += [name] * len(atoms)
    return out


def _distribution(values: np.ndarray) -> dict[str, Any]:
    if len(values) == 0:
        return {"n": 0, "mean": None, "median": None, "p90": None}
    return {
        "n": int(len(values)),
        "mean": float(np.mean(values)),
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
    }


def error_statistics(
    dh: np.ndarray, err: np.ndarray, threshold: float = DH_THRESHOLD
) -> dict[str, Any]:
    """Spearman's rho of ``dh`` against ``err`` and the error distributions (n, mean, median,
    90th percentile) of the atoms with dH <= ``threshold`` and above it (``None`` where
    undefined: constant series, an empty side)."""
    from scipy.stats import spearmanr

    rho = p = None
    if np.unique(err).size > 1 and np.unique(dh).size > 1:
        rho, p = (float(v) for v in spearmanr(dh, err))
    below, above = _distribution(err[dh <= threshold]), _distribution(err[dh > threshold])
    ratio = None
    if below["n"] and above["n"] and below["mean"] > 0:
        ratio = above["mean"] / below["mean"]
    return {
        "spearman_rho": rho,
        "spearman_p": p,
        "force_error_eV_A": {"dH<=2": below, "dH>2": above},
        "mean_error_above_over_below": ratio,
    }


def _per_structure(names: list[str], dh: np.ndarray, err: np.ndarray) -> dict[str, Any]:
    out = {}
    labels = np.array(names)
    for name in dict.fromkeys(names):
        mask = labels == name
        out[name] = {
            "atoms": int(mask.sum()),
            "median_dH": float(np.median(dh[mask])),
            "frac_dH>2": float(np.mean(dh[mask] > DH_THRESHOLD)),
            "mean_error_eV_A": float(np.mean(err[mask])),
        }
    return out


def dh_versus_error(
    train: Sequence[Atoms],
    test: Sequence[Atoms],
    models: Mapping[str, Any],
    threads: int = 1,
    bank: Any = None,
) -> dict[str, Any]:
    """dH of every atom of ``test`` against ``train`` and each model's force error on it.

    Parameters
    ----------
    train
        The training frames (the bank of environments).
    test
        Labelled frames (forces), never trained on.
    models
        Name → ASE calculator; the first one's errors make ``per_structure``.
    threads
        Threads of the kernel sums.
    bank
        A :class:`~pfd_ase.selectors.DescriptorBank` of ``train`` already built (reused).

    Returns
    -------
    dict
        ``n_train_frames``, ``n_test_frames``, ``n_test_atoms``, ``n_dH_inf``, ``bank``
        (its description), ``models`` (name → :func:`error_statistics`), ``per_structure``
        (atoms, median dH, fraction above the threshold, mean error) and ``points`` (``dH``,
        ``force_error_<name>_eV_A``, ``structure``: one entry per atom).
    """
    from pfd_ase.selectors import DescriptorBank

    if bank is None:
        bank = DescriptorBank.from_frames(list(train), source="training set")
    dh = bank.delta_entropy(list(test), threads=threads)
    names = _atom_structures(test)
    errors = {name: per_atom_force_errors(calc, test) for name, calc in models.items()}
    return {
        "n_train_frames": len(train),
        "n_test_frames": len(test),
        "n_test_atoms": int(len(dh)),
        "n_dH_inf": int(np.sum(~np.isfinite(dh))),
        "bank": bank.describe(),
        "models": {name: error_statistics(dh, err) for name, err in errors.items()},
        "per_structure": _per_structure(names, dh, errors[next(iter(errors))]),
        "points": {
            "dH": [round(float(v), 4) if np.isfinite(v) else None for v in dh],
            **{
                f"force_error_{name}_eV_A": [round(float(v), 5) for v in err]
                for name, err in errors.items()
            },
            "structure": names,
        },
    }


def plot_dh_versus_error(
    result: Mapping[str, Any], path: str | os.PathLike, model: str = "PF", title: str = ""
) -> Path | None:
    """Scatter of dH against ``model``'s per-atom force error (one colour per structure) and
    the error distributions below and above the threshold; ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    pts = result["points"]
    dh = np.array([np.inf if v is None else v for v in pts["dH"]], dtype=float)
    err = np.array(pts[f"force_error_{model}_eV_A"], dtype=float)
    names = np.array(pts["structure"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(pts["structure"]):
        mask = names == name
        left.scatter(dh[mask], err[mask], s=9, alpha=0.7, label=name)
    left.axvline(DH_THRESHOLD, color="k", ls="--", lw=1)
    rho = result["models"][model]["spearman_rho"]
    left.set_title(f"{title}{model}: Spearman rho = {rho if rho is not None else np.nan:.2f}")
    left.set_xlabel("dH against the training set (nats)")
    left.set_ylabel("|F error| per atom (eV/Å)")
    left.set_yscale("log")
    left.legend(fontsize=7, markerscale=1.5)
    low, high = err[dh <= DH_THRESHOLD], err[dh > DH_THRESHOLD]
    parts = [(p, f"dH {s} 2 (n={len(p)})") for p, s in ((low, "<="), (high, ">")) if len(p)]
    if parts:
        right.boxplot([p for p, _ in parts], whis=(10, 90), showmeans=True)
        right.set_xticks(range(1, len(parts) + 1), [label for _, label in parts])
    right.set_yscale("log")
    right.set_ylabel("|F error| per atom (eV/Å)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
