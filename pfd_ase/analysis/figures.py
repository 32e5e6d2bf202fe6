"""Figures of the analysis package: matplotlib without a display."""

from __future__ import annotations

from typing import Any

__all__ = ["new_figure"]


def new_figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib ``Figure`` with an Agg canvas (no display, thread-safe).

    Raises
    ------
    ImportError
        matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'pfd_ase[analysis]'") from exc
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig
