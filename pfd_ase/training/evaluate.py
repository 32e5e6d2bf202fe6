"""Evaluate any model (or ASE calculator) on labelled frames: errors and parity plots.

Reference labels are read from ``atoms.calc.results`` of each labelled frame (see
:mod:`pfd_ase.data`): ``energy`` (eV), ``forces`` (eV/Å) and, for periodic frames,
``stress`` (Voigt, eV/Å³). Predictions are made on copies, so the labels are never
overwritten.

Error conventions (deepmd-kit's ``dp test``):

* energy: per atom, ``(E_pred - E_ref) / N`` (eV/atom);
* forces: over every Cartesian component of every atom (eV/Å);
* virial: ``W = -σ·V`` over the 9 components of the 3×3 tensor, divided by ``N``
  (eV/atom); the same errors are also given as stress (eV/Å³). Only frames that are
  periodic and carry a stress label count.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.stress import voigt_6_to_full_3x3_stress

from pfd_ase._io import atomic_path
from pfd_ase.data import FRAME_ID_KEY

__all__ = ["evaluate", "parity_plot", "predict", "reference_labels"]

Predictions = list[dict[str, Any]]


# --------------------------------------------------------------------------- labels, predictions
def _full_stress(stress: Any) -> np.ndarray:
    stress = np.asarray(stress, dtype=float)
    return voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress.reshape(3, 3)


def reference_labels(frames: Sequence[Atoms]) -> Predictions:
    """The labels of each frame: ``{"energy", "forces", "stress" (3×3 eV/Å³ or None)}``."""
    out = []
    for i, atoms in enumerate(frames):
        results = getattr(atoms.calc, "results", None) or {}
        if "energy" not in results or "forces" not in results:
            raise ValueError(f"frame {i} is not labelled (no energy/forces in atoms.calc.results)")
        stress = results.get("stress")
        out.append(
            {
                "energy": float(results["energy"]),
                "forces": np.asarray(results["forces"], dtype=float).reshape(len(atoms), 3),
                "stress": _full_stress(stress) if stress is not None and atoms.pbc.all() else None,
            }
        )
    return out


def _as_calculator(model: Any, head: str | None = None) -> Any:
    if isinstance(model, (str, os.PathLike)):
        from pfd_ase.calculators.pfd import PFDCalculator

        return PFDCalculator(model, head=head)
    if head is not None:
        raise TypeError("head= applies to model paths, not calculator objects")
    if not callable(getattr(model, "get_potential_energy", None)):
        raise TypeError(f"expected an ASE calculator or a model path, not {type(model).__name__}")
    return model


def predict(
    model_or_calc: Any,
    frames: Sequence[Atoms],
    head: str | None = None,
    stress: bool | None = None,
) -> Predictions:
    """Predictions of a model on copies of ``frames``.

    Parameters
    ----------
    model_or_calc
        An ASE calculator, or a model path (or pre-trained name) for
        :class:`~pfd_ase.calculators.PFDCalculator`.
    head
        Branch of a multi-task model path.
    stress
        Predict the stress of periodic frames: ``None`` only where the frame has a
        stress label.

    Returns
    -------
    list of dict
        ``{"energy" (eV), "forces" (eV/Å), "stress" (3×3 eV/Å³ or None)}`` per frame.
    """
    calc = _as_calculator(model_or_calc, head)
    out = []
    for ref in frames:
        atoms = ref.copy()  # Atoms.copy() leaves the labelling calculator behind
        atoms.calc = calc
        try:
            energy = atoms.get_potential_energy(force_consistent=True)
        except PropertyNotImplementedError:
            energy = atoms.get_potential_energy()
        forces = np.array(atoms.get_forces(), dtype=float)
        want = stress
        if want is None:
            want = getattr(ref.calc, "results", {}).get("stress") is not None
        sigma = None
        if want and atoms.pbc.all():
            sigma = _full_stress(atoms.get_stress(voigt=False))
        out.append({"energy": float(energy), "forces": forces, "stress": sigma})
        atoms.calc = None
    return out


# --------------------------------------------------------------------------- errors
def _rmse(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else float("nan")


def _mae(x: np.ndarray) -> float:
    return float(np.mean(np.abs(x))) if x.size else float("nan")


def evaluate(
    model_or_calc: Any,
    frames: Sequence[Atoms],
    head: str | None = None,
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Errors of a model on labelled frames.

    Parameters
    ----------
    model_or_calc
        An ASE calculator, or a model path (or pre-trained name such as ``"chgnet"``)
        loaded with :class:`~pfd_ase.calculators.PFDCalculator`.
    frames
        Labelled frames (energy and forces; stress optional).
    head
        Branch of a multi-task model path.
    return_predictions
        Also return the predictions (``"predictions"``, see :func:`predict`), e.g. for
        :func:`parity_plot`.

    Returns
    -------
    dict
        ``n_frames``, ``n_atoms`` (total), ``energy_rmse`` / ``energy_mae`` (eV/atom),
        ``force_rmse`` / ``force_mae`` (eV/Å), ``virial_rmse`` / ``virial_mae`` (eV/atom)
        and ``stress_rmse`` / ``stress_mae`` (eV/Å³) over ``n_virial_frames`` frames with
        stress labels (``nan`` when none), and ``frames``: one dict per frame with
        ``index``, ``frame_id`` (``atoms.info["pfd_frame_id"]`` or ``None``), ``n_atoms``,
        ``energy_error`` (signed, eV/atom), ``force_rmse``, ``force_mae``,
        ``force_max_error`` (largest atomic force error norm, eV/Å), ``virial_rmse``
        (eV/atom) and ``stress_rmse`` (eV/Å³) or ``None``.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("no frames to evaluate")
    refs = reference_labels(frames)
    preds = predict(model_or_calc, frames, head=head)
    return _errors(frames, refs, preds, return_predictions)


def _errors(
    frames: Sequence[Atoms], refs: Predictions, preds: Predictions, return_predictions: bool
) -> dict[str, Any]:
    de, df, dv, ds, per_frame = [], [], [], [], []
    for i, (atoms, ref, pred) in enumerate(zip(frames, refs, preds, strict=True)):
        n = len(atoms)
        e_err = (pred["energy"] - ref["energy"]) / n
        f_err = pred["forces"] - ref["forces"]
        de.append(e_err)
        df.append(f_err.ravel())
        row: dict[str, Any] = {
            "index": i,
            "frame_id": atoms.info.get(FRAME_ID_KEY),
            "n_atoms": n,
            "energy_error": float(e_err),
            "force_rmse": _rmse(f_err),
            "force_mae": _mae(f_err),
            "force_max_error": float(np.linalg.norm(f_err, axis=1).max()) if n else 0.0,
            "virial_rmse": None,
            "stress_rmse": None,
        }
        if ref["stress"] is not None and pred["stress"] is not None:
            s_err = pred["stress"] - ref["stress"]
            v_err = -s_err * atoms.get_volume() / n
            ds.append(s_err.ravel())
            dv.append(v_err.ravel())
            row["virial_rmse"] = _rmse(v_err)
            row["stress_rmse"] = _rmse(s_err)
        per_frame.append(row)
    de_a = np.array(de)
    df_a = np.concatenate(df) if df else np.empty(0)
    dv_a = np.concatenate(dv) if dv else np.empty(0)
    ds_a = np.concatenate(ds) if ds else np.empty(0)
    out: dict[str, Any] = {
        "n_frames": len(frames),
        "n_atoms": int(sum(len(a) for a in frames)),
        "n_virial_frames": len(dv),
        "energy_rmse": _rmse(de_a),
        "energy_mae": _mae(de_a),
        "force_rmse": _rmse(df_a),
        "force_mae": _mae(df_a),
        "virial_rmse": _rmse(dv_a),
        "virial_mae": _mae(dv_a),
        "stress_rmse": _rmse(ds_a),
        "stress_mae": _mae(ds_a),
        "frames": per_frame,
    }
    if return_predictions:
        out["predictions"] = preds
    return out


# --------------------------------------------------------------------------- parity plot
def _predictions_from(source: Any, frames: Sequence[Atoms]) -> Predictions:
    if isinstance(source, Mapping) and "predictions" in source:
        return list(source["predictions"])
    if isinstance(source, (str, os.PathLike)) or callable(
        getattr(source, "get_potential_energy", None)
    ):
        return predict(source, frames)
    items = list(source)
    if len(items) != len(frames):
        raise ValueError(f"{len(items)} predictions for {len(frames)} frames")
    if items and isinstance(items[0], Atoms):
        return reference_labels(items)
    return items


def parity_plot(
    frames: Sequence[Atoms],
    predictions: Any,
    path: str | os.PathLike,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Write a parity plot (PNG) of predicted against reference labels.

    Panels: energy per atom (eV/atom), force components (eV/Å) and, when stress labels
    exist, virial components per atom (eV/atom); each legend gives the RMSE.

    Parameters
    ----------
    frames
        Labelled reference frames.
    predictions
        An ASE calculator or model path (predictions are made), the result of
        :func:`evaluate` with ``return_predictions=True``, the list returned by
        :func:`predict`, or predicted frames (Atoms carrying results).
    path
        Output PNG (written atomically).
    title
        Figure title.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            f"{exc}. Parity plots need matplotlib: pip install 'pfd_ase[analysis]'"
        ) from exc

    frames = list(frames)
    refs = reference_labels(frames)
    preds = _predictions_from(predictions, frames)
    n = np.array([len(a) for a in frames])
    panels = [
        (
            "Energy",
            "eV/atom",
            np.array([r["energy"] for r in refs]) / n,
            np.array([p["energy"] for p in preds]) / n,
        ),
        (
            "Force components",
            "eV/Å",
            np.concatenate([r["forces"].ravel() for r in refs]),
            np.concatenate([np.asarray(p["forces"]).ravel() for p in preds]),
        ),
    ]
    pairs = [
        (a, r, p)
        for a, r, p in zip(frames, refs, preds, strict=True)
        if r["stress"] is not None and p.get("stress") is not None
    ]
    if pairs:
        panels.append(
            (
                "Virial components",
                "eV/atom",
                np.concatenate(
                    [(-r["stress"] * a.get_volume() / len(a)).ravel() for a, r, _ in pairs]
                ),
                np.concatenate(
                    [(-p["stress"] * a.get_volume() / len(a)).ravel() for a, _, p in pairs]
                ),
            )
        )

    fig = Figure(figsize=(4.2 * len(panels), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, unit, ref, pred) in zip(axes, panels, strict=True):
        rmse = _rmse(pred - ref)
        scale, shown = (1000.0, f"m{unit}") if rmse < 0.1 else (1.0, unit)
        ax.scatter(ref, pred, s=8, alpha=0.6, label=f"RMSE {rmse * scale:.3g} {shown}")
        lo = float(min(ref.min(), pred.min()))
        hi = float(max(ref.max(), pred.max()))
        pad = 0.05 * (hi - lo) or 0.1
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        ax.set_xlabel(f"reference {name.lower()} ({unit})")
        ax.set_ylabel(f"predicted {name.lower()} ({unit})")
        ax.set_title(name)
        ax.legend(loc="upper left")
    if title:
        fig.suptitle(title)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
