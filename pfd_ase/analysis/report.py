"""The report folder of a validation: ``summary.json``, ``report.md`` and the figures.

:func:`write_report` writes the results of :mod:`pfd_ase.analysis.validate` (errors,
phonons, vacancy formation energies with their flags) as JSON and as a short Markdown page
that links every PNG in the folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pfd_ase._io import write_json

__all__ = ["report_lines", "write_report"]


def report_lines(summary: Mapping[str, Any]) -> list[str]:
    """Markdown bullet lines of the results in ``summary``.

    Parameters
    ----------
    summary
        ``errors`` (name → :func:`pfd_ase.training.evaluate.evaluate` errors), ``phonons``
        (name → ``{"special_points": ...}``), ``vacancy_formation_eV`` (model → phase →
        E_f) and ``vacancy_flags`` (model → phase → flags); any may be missing. A flagged
        formation energy is printed with its flags and "not a result".

    Returns
    -------
    list of str
        One line per result.
    """
    nan = float("nan")
    lines = []
    for name, res in summary.get("errors", {}).items():
        lines.append(
            f"- **{name.replace('_', ' ')}**: force RMSE {res.get('force_rmse', nan):.4f}"
            f" eV/Å, energy RMSE {res.get('energy_rmse', nan):.4f} eV/atom"
            f" ({res.get('n_frames')} frames)"
        )
    for key, res in summary.get("phonons", {}).items():
        gamma = res["special_points"]["Gamma"]
        lines.append(f"- phonons {key}: Γ optical {max(gamma):.2f} THz")
    flags = summary.get("vacancy_flags", {})
    for model, phases in summary.get("vacancy_formation_eV", {}).items():
        parts = []
        for phase, e_f in phases.items():
            text = f"{phase} {e_f:.2f} eV"
            why = flags.get(model, {}).get(phase)
            parts.append(f"{text} (not a result: {', '.join(why)})" if why else text)
        lines.append(f"- vacancy E_f ({model}): " + ", ".join(parts))
    if any(any(per.values()) for per in flags.values()):
        from pfd_ase.analysis.vacancy import PHYSICAL_FORMATION_ENERGY_EV

        low, high = PHYSICAL_FORMATION_ENERGY_EV
        lines.append(
            f"- flags: *unphysical* E_f outside ({low:g}, {high:g}) eV, *not converged* "
            "relaxation hit its step cap, *extrapolation* phase absent from the model's "
            "training structures"
        )
    return lines


def write_report(folder: str | os.PathLike, summary: dict[str, Any], title: str) -> Path:
    """``summary.json`` plus a short ``report.md`` (see :func:`report_lines`) linking the PNGs.

    Parameters
    ----------
    folder
        The report folder (created if needed); every ``*.png`` in it is linked.
    summary
        JSON-safe results.
    title
        The page's heading.

    Returns
    -------
    Path
        The path of ``report.md``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "summary.json", summary)
    lines = [f"# {title}", "", *report_lines(summary), ""]
    for png in sorted(folder.glob("*.png")):
        lines.append(f"![{png.stem}]({png.name})")
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return folder / "report.md"
