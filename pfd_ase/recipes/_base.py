"""Shared recipe machinery: write structures into the run directory, run the workflow,
validate the models, write the report folder."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ase import Atoms

from pfd_ase._io import read_json, write_json
from pfd_ase.data import read_frames, write_frames


def deep_update(base: dict[str, Any], updates: Mapping[str, Any] | None) -> dict[str, Any]:
    """Recursively merge ``updates`` into a copy of ``base`` (user overrides win)."""
    out = copy.deepcopy(base)
    for key, value in (updates or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def cached(path: Path, key: Mapping[str, Any], compute: Callable[[], Any]) -> Any:
    """Result stored in ``path`` for ``key`` (JSON-safe), else ``compute()`` stored there.

    Lets an interrupted validation resume without repeating finished DFT or model work; a
    different key (another model file, labeler setting or supercell) recomputes.
    """
    key = json.loads(json.dumps(key, default=str))
    if path.exists():
        record = read_json(path)
        if record.get("key") == key:
            return record["result"]
    result = compute()
    write_json(path, {"key": key, "result": result})
    return result


def model_key(model: str | Path) -> dict[str, Any]:
    """Identity of a model file for :func:`cached`: path, size and modification time."""
    if str(model) == "chgnet":
        return {"model": "chgnet"}
    stat = Path(model).stat()
    return {"model": str(Path(model).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def structure_specs(structures: Mapping[str, Atoms], folder: Path) -> dict[str, dict]:
    """Write each structure to ``folder/<name>.extxyz``; return workflow structure specs."""
    specs = {}
    for name, atoms in structures.items():
        path = folder / f"{name}.extxyz"
        write_frames(path, [atoms])
        specs[name] = {"file": str(path.resolve())}
    return specs


def entropy_curve(summary: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(step, dataset entropy) after every fine-tune labelling step, in run order."""
    return [
        (key.removesuffix(".label"), rec["dataset_entropy"])
        for key, rec in summary["steps"].items()
        if key.startswith("ft.") and key.endswith(".label") and rec.get("dataset_entropy")
    ]


def plot_entropy(curve: list[tuple[str, float]], path: Path) -> Path | None:
    """Dataset entropy vs fine-tune iteration (supplement Fig. S1 analogue)."""
    if not curve:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(range(1, len(curve) + 1), [v for _, v in curve], "o-")
    ax.set_xticks(range(1, len(curve) + 1), [k for k, _ in curve], rotation=30, fontsize=7)
    ax.set_ylabel("entropy of the labelled set (nats)")
    ax.set_title("QUESTS entropy of the training set per iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def parity_plots(run_dir: Path, teacher: str, student: str | None, report: Path) -> dict:
    """Errors and parity plots: teacher vs DFT, student vs DFT, student vs teacher."""
    from pfd_ase.training.evaluate import evaluate, parity_plot

    data = read_frames(run_dir / "data" / "labelled.extxyz")
    out: dict[str, Any] = {}
    pairs = [("teacher_vs_dft", teacher, data)]
    if student:
        pairs.append(("student_vs_dft", student, data))
        teacher_labelled = run_dir / "distill" / "teacher_labelled.extxyz"
        if teacher_labelled.exists():
            pairs.append(("student_vs_teacher", student, read_frames(teacher_labelled)))
    for name, model, frames in pairs:
        result = evaluate(model, frames, return_predictions=True)
        parity_plot(frames, result, report / f"parity_{name}.png", title=name.replace("_", " "))
        out[name] = {k: v for k, v in result.items() if k not in ("frames", "predictions")}
    return out


def write_report(report: Path, summary: dict[str, Any], title: str) -> Path:
    """``summary.json`` plus a short ``report.md`` linking the figures."""
    write_json(report / "summary.json", summary)
    lines = [f"# {title}", ""]
    val = summary.get("errors", {})
    for name, res in val.items():
        lines.append(
            f"- **{name.replace('_', ' ')}**: force RMSE {res.get('force_rmse', float('nan')):.4f}"
            f" eV/Å, energy RMSE {res.get('energy_rmse', float('nan')):.4f} eV/atom"
            f" ({res.get('n_frames')} frames)"
        )
    for key, res in summary.get("phonons", {}).items():
        gamma = res["special_points"]["Gamma"]
        lines.append(f"- phonons {key}: Γ optical {max(gamma):.2f} THz")
    for model, phases in summary.get("vacancy_formation_eV", {}).items():
        lines.append(
            f"- vacancy E_f ({model}): " + ", ".join(f"{p} {e:.2f} eV" for p, e in phases.items())
        )
    lines.append("")
    for png in sorted(report.glob("*.png")):
        lines.append(f"![{png.stem}]({png.name})")
    (report / "report.md").write_text("\n".join(lines) + "\n")
    return report / "report.md"
