"""Rules shared by the fine-tuning of the universal base models (CHGNet and SevenNet).

:func:`pfd_ase.training.chgnet.finetune_chgnet` and
:func:`pfd_ase.training.sevennet.finetune_sevennet` keep one contract: labelled frames in,
a seeded validation split (:func:`split_validation`), per-element reference energies
refitted by least squares before training (:func:`fit_element_shifts`), the epoch of lowest
:func:`valid_loss` kept, a run resumable from its ``pfd_train.json`` record
(:func:`previous_record`) and its per-epoch states. The pieces of that contract live here,
once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from ase import Atoms

from pfd_ase._io import read_json

__all__ = [
    "RECORD_FILE",
    "Tee",
    "check_finetune_inputs",
    "data_digest",
    "distribution_versions",
    "early_stop_due",
    "early_stop_line",
    "epoch_generator",
    "epoch_line",
    "fit_element_shifts",
    "fmt_mae",
    "frame_ids",
    "new_record",
    "previous_record",
    "split_validation",
    "torch_state",
    "valid_loss",
    "with_stress_labels",
]

#: The record of a fine-tuning run (settings, versions, per-epoch errors, best epoch).
RECORD_FILE = "pfd_train.json"


# --------------------------------------------------------------------------- inputs
def check_finetune_inputs(
    train_frames: Sequence[Atoms],
    valid_frames: Sequence[Atoms] | None,
    epochs: int,
    batch_size: int,
    early_stopping: int | None = None,
) -> None:
    """Refuse settings and frames no fine-tuning can use (``ValueError`` naming them)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if early_stopping is not None and early_stopping < 1:
        raise ValueError(f"early_stopping must be >= 1 or None, got {early_stopping}")
    if not train_frames:
        raise ValueError("no training frames")
    for name, frames in (("train", train_frames), ("valid", valid_frames or [])):
        for i, atoms in enumerate(frames):
            results = getattr(atoms.calc, "results", {})
            if "energy" not in results or "forces" not in results:
                raise ValueError(f"{name} frame {i} is not labelled (energy and forces)")


def with_stress_labels(*frame_sets: Sequence[Atoms]) -> bool:
    """Whether stress is a target: every frame periodic with a stress label."""
    return all(
        a.pbc.all() and a.calc.results.get("stress") is not None
        for frames in frame_sets
        for a in frames
    )


def split_validation(
    frames: Sequence[Atoms], fraction: float, seed: int = 0, min_valid_frames: int = 5
) -> tuple[list[Atoms], list[Atoms]]:
    """Seeded split of ``frames`` into (train, valid).

    Parameters
    ----------
    frames
        The frames to split (order kept within each part).
    fraction
        Share of the frames held out, ``0 <= fraction < 1``; at least one frame is held
        out when ``fraction > 0``.
    seed
        Seeds the choice (``np.random.default_rng([seed, 1])``).
    min_valid_frames
        Hold out only when the share is at least this many frames (an integer >= 1);
        otherwise nothing is (the one split rule of every fine-tuning).

    Returns
    -------
    tuple of list
        Training frames and validation frames (empty when nothing is held out).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {fraction}")
    if isinstance(min_valid_frames, bool) or not isinstance(min_valid_frames, int):
        raise ValueError(f"min_valid_frames must be an integer >= 1, got {min_valid_frames!r}")
    if min_valid_frames < 1:
        raise ValueError(f"min_valid_frames must be >= 1, got {min_valid_frames}")
    frames = list(frames)
    n = len(frames)
    n_valid = min(n - 1, max(1, int(round(fraction * n)))) if fraction > 0.0 else 0
    if n_valid < min_valid_frames:
        return frames, []
    held = set(np.random.default_rng([seed, 1]).permutation(n)[:n_valid].tolist())
    train = [a for i, a in enumerate(frames) if i not in held]
    return train, [a for i, a in enumerate(frames) if i in held]


def data_digest(frames: Sequence[Atoms]) -> str:
    """Hash of structures and labels (energy, forces, stress; bit-exact)."""
    from pfd_ase.data import frame_fingerprint

    h = hashlib.sha1()
    for atoms in frames:
        h.update(frame_fingerprint(atoms).encode())
        for key in ("energy", "forces", "stress"):
            value = atoms.calc.results.get(key) if atoms.calc is not None else None
            if value is not None:
                h.update(key.encode())
                h.update(np.ascontiguousarray(value, dtype=float).tobytes())
    return h.hexdigest()


def frame_ids(frames: Sequence[Atoms]) -> list[str]:
    """Short fingerprints of frames (which frames were held out)."""
    from pfd_ase.data import frame_fingerprint

    return [frame_fingerprint(a)[:12] for a in frames]


# --------------------------------------------------------------------------- energy refit
def fit_element_shifts(numbers: Sequence[np.ndarray], residual: np.ndarray) -> dict[int, float]:
    """Per-element energy shifts that fit per-atom energy residuals by least squares.

    Parameters
    ----------
    numbers
        Atomic numbers of each frame.
    residual
        ``(e_label - e_model) / n_atoms`` of each frame (eV/atom).

    Returns
    -------
    dict
        ``{Z: δ_Z}`` (eV/atom) minimising ``Σ_frames (residual - Σ_Z x_Z δ_Z)²``, ``x_Z``
        the fraction of element ``Z`` in the frame: adding ``δ_Z`` to each atom's reference
        energy removes the fitted part of the error. For one element, ``δ`` is the mean
        residual per atom. (The analogue of the energy-bias refit of DPA-2, eq. 6.)
    """
    elements = sorted({int(z) for frame in numbers for z in np.asarray(frame).tolist()})
    features = np.zeros((len(numbers), len(elements)))
    for i, frame in enumerate(numbers):
        counts = np.bincount(np.asarray(frame, dtype=int), minlength=max(elements) + 1)
        features[i] = counts[elements] / max(len(frame), 1)
    delta = np.linalg.lstsq(features, np.asarray(residual, dtype=float), rcond=None)[0]
    return {z: float(d) for z, d in zip(elements, delta, strict=True)}


# --------------------------------------------------------------------------- selection
def valid_loss(mae: dict[str, float], weights: dict[str, float]) -> float:
    """The model-selection score: ``w_e · MAE_e + w_f · MAE_f`` (eV/atom, eV/Å).

    Stress is left out: its errors (GPa) would outweigh energy and forces.
    """
    return float(sum(weights[k] * mae[k] for k in ("e", "f") if k in mae))


def previous_record(record_path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The record of an earlier run in the same folder that this run continues.

    The record when it has the same ``settings`` (an interrupted run, or a finished one:
    ``record["done"]``); ``{}`` when there is none or its settings differ (a fresh run).
    """
    if not record_path.exists():
        return {}
    record = read_json(record_path)
    return record if record.get("settings") == settings else {}


# --------------------------------------------------------------------------- runtime
class Tee(io.TextIOBase):
    """A text stream writing to several streams."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


@contextlib.contextmanager
def torch_state(seed: int, threads: int | None, device: str) -> Iterator[None]:
    """Seed torch inside a forked RNG and set the thread count; both restored on exit."""
    import torch

    devices = [device] if str(device).startswith("cuda") else []
    old_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if threads:
            torch.set_num_threads(int(threads))
        try:
            yield
        finally:
            torch.set_num_threads(old_threads)


def epoch_generator(seed: int, epoch: int) -> Any:
    """A torch generator for the data order of one epoch (same order when resumed)."""
    import torch

    value = int(np.random.default_rng([seed, epoch]).integers(2**62))
    return torch.Generator().manual_seed(value)


def distribution_versions(*dists: str) -> dict[str, str | None]:
    """Installed versions of ``dists`` (``None`` when missing)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def fmt_mae(mae: dict[str, float]) -> str:
    """``"e 0.01 eV/atom f 0.1 eV/Å s 1 GPa"``: one line of errors."""
    units = {"e": "eV/atom", "f": "eV/Å", "s": "GPa"}
    return " ".join(f"{k} {v:.4g} {units.get(k, '')}".rstrip() for k, v in mae.items())


# --------------------------------------------------------------------------- the record
def new_record(settings: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The ``pfd_train.json`` record of a fresh run: ``settings``, the model's ``fields``
    (versions, targets, parameter counts, energy shifts, validation split ...) and the
    progress keys every fine-tuning fills in (history, best epoch, done, wall time)."""
    return {
        "settings": settings,
        **fields,
        "initial_valid_mae": None,
        "initial_valid_loss": None,
        "history": [],
        "best_epoch": None,
        "best_valid_loss": None,
        "epochs_done": 0,
        "stopped_early": None,
        "done": False,
        "wall_s": 0.0,
    }


def early_stop_due(record: dict[str, Any], patience: int | None, epoch: int) -> bool:
    """Whether a validated run stops before ``epoch`` (0-based): ``patience`` epochs without
    a better validation loss; marks ``record["stopped_early"]`` when it does."""
    best = record.get("best_epoch")
    if not patience or best is None or epoch - best < patience:
        return False
    record["stopped_early"] = epoch
    return True


def epoch_line(
    model: str,
    record: dict[str, Any],
    row: dict[str, Any],
    epochs: int,
    start_epoch: int,
) -> str:
    """The progress line of one finished epoch: errors, best epoch, seconds and ETA."""
    epoch = row["epoch"]
    per_epoch = float(np.mean([r["seconds"] for r in record["history"][start_epoch:]]))
    valid = ""
    if row.get("valid_mae") is not None:
        valid = (
            f" | valid MAE {fmt_mae(row['valid_mae'])}, loss {row['valid_loss']:.4g}"
            f" (best: epoch {record['best_epoch']})"
        )
    return (
        f"{model} fine-tune epoch {epoch}/{epochs} (step {row['steps']}): "
        f"train MAE {fmt_mae(row['train_mae'])}{valid}"
        f" | {row['seconds']:.1f} s/epoch, ETA {per_epoch * (epochs - epoch):.0f} s"
    )


def early_stop_line(model: str, record: dict[str, Any], patience: int | None) -> str | None:
    """The line saying a run stopped early (``None`` when it did not)."""
    if record.get("stopped_early") is None:
        return None
    return (
        f"{model} fine-tune stopped early after epoch {record['stopped_early']}: "
        f"no improvement for {patience} epochs"
    )
