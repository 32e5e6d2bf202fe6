"""Validation of trained models against each other and the labeler, for any recipe.

- :func:`model_errors`: energy/force/virial errors and parity plots of models on labelled
  frames (teacher vs DFT, student vs DFT, student vs teacher ...).
- :func:`compare_phonons`: phonon dispersions of one crystal with several models and the
  labeler, one figure.
- :func:`compare_vacancies`: vacancy formation energies of several phases with several
  models, each value checked by :func:`pfd_ase.analysis.vacancy.vacancy_flags`, one figure.
- :func:`entropy_curve` and :func:`plot_entropy`: the dataset entropy per fine-tune
  iteration of a run (supplement Fig. S1).

Each model or labeler is a :class:`Subject`: how to get its calculator (only called when a
result must be computed) and a JSON-safe identity. The expensive results go through a
``step(key, func, inputs)`` callable, e.g. a run directory's resumable steps, so that a
rerun repeats only what is missing or what changed inputs (another model file, labeler
setting or supercell) invalidate; the default :func:`run_directly` computes everything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ase import Atoms

if TYPE_CHECKING:
    from pfd_ase.analysis.phonons import PhononComparison

__all__ = [
    "Step",
    "Subject",
    "compare_phonons",
    "compare_vacancies",
    "entropy_curve",
    "model_errors",
    "plot_entropy",
    "run_directly",
    "run_wall_s",
    "stage_walls",
]

#: ``step(key, func, inputs)``: the result of ``func()`` (a JSON-safe dict) for step ``key``,
#: computed again only when ``inputs`` (JSON-safe) differ from the stored ones.
Step = Callable[[str, Callable[[], dict[str, Any]], Mapping[str, Any]], dict[str, Any]]


def run_directly(
    key: str, func: Callable[[], dict[str, Any]], inputs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A :data:`Step` that stores nothing: ``func()``."""
    return func()


@dataclass(frozen=True)
class Subject:
    """A model or labeler to validate.

    Attributes
    ----------
    calculator
        Zero-argument callable returning its ASE calculator; called only when a result is
        missing (loading a model or starting DFT costs time).
    identity
        JSON-safe: what makes its results valid (model file hash, labeler settings).
    trained_on
        Names of the structures it was trained on (results on others are extrapolations),
        or ``None`` when that does not apply (the labeler).
    """

    calculator: Callable[[], Any]
    identity: Mapping[str, Any]
    trained_on: Collection[str] | None = None


def model_errors(
    sets: Mapping[str, tuple[Any, Sequence[Atoms]]], folder: str | os.PathLike | None = None
) -> dict[str, dict[str, Any]]:
    """Errors of models on labelled frames, with a parity plot per pair.

    Parameters
    ----------
    sets
        Name (e.g. ``"teacher_vs_dft"``) → (model path or ASE calculator, labelled frames).
    folder
        Where ``parity_<name>.png`` go (none drawn when ``None``).

    Returns
    -------
    dict
        Name → :func:`pfd_ase.training.evaluate.evaluate` errors without the per-frame
        records.
    """
    from pfd_ase.training.evaluate import evaluate, parity_plot

    out: dict[str, dict[str, Any]] = {}
    for name, (model, frames) in sets.items():
        result = evaluate(model, frames, return_predictions=True)
        if folder is not None:
            path = Path(folder) / f"parity_{name}.png"
            parity_plot(frames, result, path, title=name.replace("_", " "))
        out[name] = {k: v for k, v in result.items() if k not in ("frames", "predictions")}
    return out


def compare_phonons(
    primitive: Atoms,
    subjects: Mapping[str, Subject],
    supercell: Sequence[int] | Mapping[str, Sequence[int]] = (3, 3, 3),
    *,
    step: Step = run_directly,
    plot: str | os.PathLike | None = None,
    title: str | None = None,
    folder: str | os.PathLike | None = None,
    reference: str = "DFT",
    mesh: Sequence[int] | None = (20, 20, 20),
    temperature_K: float = 300.0,
) -> PhononComparison:
    """Phonons of ``primitive`` with each subject (:func:`phonon_bands`), compared.

    Parameters
    ----------
    primitive
        The primitive cell.
    subjects
        Name (``"DFT"``, ``"PF"``, ``"PFD"`` ...) → :class:`Subject`. A DFT labeler shared
        by all supercells needs :func:`pfd_ase.analysis.phonons.phonon_labeler`'s settings.
    supercell
        Repeats for every subject, or name → repeats (e.g. a smaller one for DFT).
    step
        Runs ``phonons_<name>`` with inputs ``{**identity, "supercell": ..., "mesh": ...,
        "temperature_K": ..., "phonopy_params": path or None}``.
    plot
        PNG of all dispersions (none when ``None``).
    title
        Its title.
    folder
        Each subject's ``phonopy_params.yaml`` goes to ``folder/<name>/`` (none saved when
        ``None``), for phonopy's own tools.
    reference
        The subject the others are compared with (:func:`phonon_comparison`).
    mesh
        q-point mesh of the heat capacity and free energy (``None``: not computed).
    temperature_K
        Their temperature, K.

    Returns
    -------
    PhononComparison
        A ``dict`` of name → :func:`pfd_ase.analysis.phonons.phonon_bands` result, with
        the attribute ``summary``: :func:`pfd_ase.analysis.phonons.phonon_comparison`
        (``phonon_max_dev_THz`` of each non-reference model, every branch at Γ, X, L,
        per-branch deviations, heat capacity and free energy, ``phonopy_params`` paths).
    """
    from pfd_ase.analysis.phonons import (
        PHONOPY_PARAMS,
        PhononComparison,
        phonon_bands,
        plot_phonon_bands,
    )

    out = {}
    for name, subject in subjects.items():
        sc = supercell[name] if isinstance(supercell, Mapping) else supercell
        # resolved: the step's inputs do not depend on how the run directory was spelled
        target = None if folder is None else Path(folder).resolve() / name
        options = {"folder": target, "mesh": mesh, "temperature_K": temperature_K}
        out[name] = step(
            f"phonons_{name}",
            lambda subject=subject, sc=sc, options=options: phonon_bands(
                primitive, subject.calculator(), sc, **options
            ),
            {
                **subject.identity,
                "supercell": tuple(sc),
                "mesh": None if mesh is None else tuple(mesh),
                "temperature_K": float(temperature_K),
                "phonopy_params": None if target is None else str(target),
            },
        )
        if target is not None and out[name].get("phonopy_params"):  # where it is now
            out[name] = {**out[name], "phonopy_params": str(target / PHONOPY_PARAMS)}
    if plot is not None and out:
        plot_phonon_bands(out, plot, title=title)
    return PhononComparison(out, reference)


def compare_vacancies(
    cells: Mapping[str, Atoms],
    subjects: Mapping[str, Subject],
    reference: Atoms | None = None,
    *,
    step: Step = run_directly,
    plot: str | os.PathLike | None = None,
    title: str | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Vacancy formation energies of each phase with each subject, checked and plotted.

    Parameters
    ----------
    cells
        Perfect supercells by phase name (:func:`pfd_ase.analysis.vacancy_supercells`).
    subjects
        Name → :class:`Subject`.
    reference
        Structure whose energy per atom is the chemical potential (e.g. diamond Si), see
        :func:`pfd_ase.analysis.vacancy.vacancy_series`.
    step
        Runs ``vacancies_<name>`` with inputs ``{**identity, **kwargs, "stability_check":
        settings, "phases": [...]}``.
    plot
        PNG bar chart, flagged values hatched, unstable ones marked "unstable" (none when
        ``None``).
    title
        Its title.
    **kwargs
        Passed to :func:`pfd_ase.analysis.vacancy.vacancy_formation_energy`
        (``max_steps``, ``stability_check`` ...).

    Returns
    -------
    dict
        ``vacancy_formation_eV`` (name → phase → E_f, ``None`` where the perfect cell is
        unstable under the subject), ``vacancy_details`` (name → phase → full result),
        ``vacancy_flags`` (name → phase → reasons it is not a result, see
        :func:`pfd_ase.analysis.vacancy.vacancy_flags`) and ``vacancy_unstable`` (name →
        phase → ``"perfect cell unstable under <name>: <why>"``, only unstable phases).
    """
    from pfd_ase.analysis.vacancy import (
        plot_vacancy_bars,
        stability_settings,
        vacancy_flags,
        vacancy_series,
    )

    check = stability_settings(kwargs.get("stability_check", True))
    details: dict[str, dict[str, Any]] = {}
    for name, subject in subjects.items():
        record = step(
            f"vacancies_{name}",
            lambda subject=subject: vacancy_series(
                cells, subject.calculator(), reference, **kwargs
            ),
            {**subject.identity, **kwargs, "stability_check": check, "phases": list(cells)},
        )
        details[name] = {phase: record[phase] for phase in cells}  # stored JSON sorts keys
    energies = {n: {p: r["E_f_eV"] for p, r in d.items()} for n, d in details.items()}
    flags = {
        name: {p: vacancy_flags(r, subjects[name].trained_on, p) for p, r in d.items()}
        for name, d in details.items()
    }
    unstable = {
        name: {
            p: f"perfect cell unstable under {name}: {r['stability']['reason']}"
            for p, r in d.items()
            if r.get("stable") is False
        }
        for name, d in details.items()
    }
    if plot is not None and energies:
        flagged = {
            n: [p for p, f in per.items() if f and p not in unstable[n]] for n, per in flags.items()
        }
        plot_vacancy_bars(energies, plot, title=title, flagged=flagged, unstable=unstable)
    return {
        "vacancy_formation_eV": energies,
        "vacancy_details": details,
        "vacancy_flags": flags,
        "vacancy_unstable": unstable,
    }


def entropy_curve(summary: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(step, dataset entropy) after every fine-tune labelling step of a run, in run order.

    Parameters
    ----------
    summary
        A run's summary (``pfd_ase.workflow.run``'s result or ``summary.json``).

    Returns
    -------
    list of tuple
        ``("ft.<stage>.<iteration>", entropy in nats)``.
    """
    return [
        (key.removesuffix(".label"), rec["dataset_entropy"])
        for key, rec in summary["steps"].items()
        if key.startswith("ft.") and key.endswith(".label") and rec.get("dataset_entropy")
    ]


def stage_walls(summary: Mapping[str, Any]) -> dict[str, float]:
    """Wall time (s) per stage of a run, from its step records.

    Parameters
    ----------
    summary
        A run's summary (``steps``: key → record with ``wall_s``).

    Returns
    -------
    dict
        ``init``, ``ft.<stage>`` for each fine-tune stage, ``distill`` and ``validate``
        (the workflow's own ``validation`` step and a recipe's ``validate.*`` steps), and
        any other first key part, in run order, rounded to 0.1 s. Steps recorded as
        ``concurrent`` (run beside the others: :func:`pfd_ase.recipes._base.references_beside`)
        are summed apart, under ``concurrent``: their wall time overlaps the others'.
    """
    out: dict[str, float] = {}
    for key, record in summary["steps"].items():
        parts = key.split(".")
        stage = ".".join(parts[:2]) if parts[0] == "ft" else parts[0]
        stage = "validate" if stage == "validation" else stage
        stage = "concurrent" if record.get("concurrent") else stage
        out[stage] = out.get(stage, 0.0) + float(record.get("wall_s") or 0.0)
    return {k: round(v, 1) for k, v in out.items()}


def run_wall_s(stage_wall_s: Mapping[str, float], references_wait_s: float | None = None) -> float:
    """A run's wall time (s) from its :func:`stage_walls`: every stage but ``concurrent``
    (those steps overlapped the others), plus the run's wait for them, ``references_wait_s``."""
    stages = sum(v for k, v in stage_wall_s.items() if k != "concurrent")
    return stages + float(references_wait_s or 0.0)


def plot_entropy(curve: Sequence[tuple[str, float]], path: str | os.PathLike) -> Path | None:
    """Dataset entropy vs fine-tune iteration (supplement Fig. S1 analogue).

    Returns
    -------
    Path or None
        ``path``, or ``None`` (nothing drawn) for an empty curve.
    """
    from pfd_ase.analysis.figures import new_figure

    if not curve:
        return None
    fig = new_figure((6, 4))
    ax = fig.add_subplot()
    ax.plot(range(1, len(curve) + 1), [v for _, v in curve], "o-")
    ax.set_xticks(range(1, len(curve) + 1), [k for k, _ in curve], rotation=30, fontsize=7)
    ax.set_ylabel("entropy of the labelled set (nats)")
    ax.set_title("QUESTS entropy of the training set per iteration")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
