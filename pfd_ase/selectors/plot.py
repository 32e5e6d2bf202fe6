"""Entropy of the selected frames against their number (PFD supplement, Fig. S1).

matplotlib is imported only when a figure is drawn (``pip install pfd_ase[analysis]``); figures
are rendered with the Agg canvas and never touch pyplot's global state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from pfd_ase.selectors import quests
from pfd_ase.selectors.base import as_frames
from pfd_ase.selectors.entropy_selector import EntropySelector
from pfd_ase.selectors.random_selector import RandomSelector


def _figure_class() -> tuple[type, type]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install pfd_ase[analysis]") from exc
    return Figure, FigureCanvasAgg


def selection_entropy(
    frames: Sequence[Atoms],
    order: Sequence[int],
    h: float = quests.DEFAULT_BANDWIDTH,
    k: int = quests.DEFAULT_K,
    cutoff: float = quests.DEFAULT_CUTOFF,
) -> np.ndarray:
    """Entropy (nats) of ``frames[order[:m]]`` for m = 1 .. len(order)."""
    frames = as_frames(frames, "frames")
    blocks = [quests.descriptors(frames[i], k=k, cutoff=cutoff) for i in order]
    return quests.entropy_curve(blocks, h)


def plot_entropy_vs_frames(
    curves: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str | None = "Entropy of the selected frames",
) -> Path:
    """Write a PNG of entropy (nats) against the number of selected frames, one line per curve.

    ``curves[label][m - 1]`` is the entropy after m frames. Returns the path written.
    """
    figure, canvas = _figure_class()
    fig = figure(figsize=(5.0, 3.6), dpi=120)
    canvas(fig)
    ax = fig.add_subplot()
    for label, values in curves.items():
        values = np.asarray(values, dtype=np.float64)
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=label)
    ax.set_xlabel("number of selected frames")
    ax.set_ylabel("entropy H (nats)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def compare_selection(
    candidates: Sequence[Atoms],
    path: str | Path,
    *,
    n_target: int,
    chunk_size: int = 1,
    reference: Sequence[Atoms] | None = None,
    seed: int = 0,
    h: float = quests.DEFAULT_BANDWIDTH,
    k: int = quests.DEFAULT_K,
    cutoff: float = quests.DEFAULT_CUTOFF,
) -> dict[str, np.ndarray]:
    """Fig. S1: entropy of the frames chosen by :class:`EntropySelector` and by
    :class:`RandomSelector` (same ``n_target``), against their number, written to ``path``.

    The entropy is that of the selected frames alone. Returns the two curves.
    """
    by_entropy = EntropySelector(
        n_target=n_target, chunk_size=chunk_size, h=h, k=k, cutoff=cutoff
    ).select(candidates, reference)
    by_chance = RandomSelector(n_target=n_target, seed=seed).select(candidates, reference)
    curves = {
        "entropy selection": selection_entropy(candidates, by_entropy, h, k, cutoff),
        f"random selection (seed {seed})": selection_entropy(candidates, by_chance, h, k, cutoff),
    }
    plot_entropy_vs_frames(curves, path)
    return curves
