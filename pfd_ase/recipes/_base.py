"""Shared recipe machinery: presets, structures for the workflow, validation and report.

A recipe is config → :func:`pfd_ase.workflow.run` → :func:`validate_run` → report; this
module holds what every recipe needs for that: :func:`deep_update` (presets merged with
user overrides), the resumable validation steps
(:func:`validation_step`, :func:`model_subject`), and :func:`recipe_parser` for the
command line.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pfd_ase.analysis.validate import Step, Subject

#: Labelers cheap enough for vacancy relaxations and 3×3×3 phonons in any preset.
CLASSICAL = ("sw", "tersoff", "emt")


def deep_update(base: Mapping[str, Any], updates: Mapping[str, Any] | None) -> dict[str, Any]:
    """Recursively merge ``updates`` into a copy of ``base`` (user overrides win)."""
    out = copy.deepcopy(dict(base))
    for key, value in (updates or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validation_step(workdir: str | Path) -> Step:
    """The :data:`~pfd_ase.analysis.validate.Step` of a run directory: its resumable steps.

    Each result is the step ``validate.<key>`` of :meth:`RunState.run_step
    <pfd_ase.workflow.state.RunState.run_step>` (record ``state/validate.<key>.json``), redone
    when its inputs (model identity, labeler settings, supercell ...) change.
    """
    from pfd_ase.workflow.state import RunState

    state = RunState(workdir)

    def step(key: str, func: Callable[[], Any], inputs: Mapping[str, Any]) -> Any:
        return state.run_step(f"validate.{key}", lambda: {"result": func()}, inputs)["result"]

    return step


def model_subject(model: str, trained_on: list[str] | None = None) -> Subject:
    """A trained model (path or pre-trained name) to validate, loaded on first use.

    Its identity is :func:`pfd_ase.models.resolve_model`'s (a content hash): a retrained
    model at the same path redoes its validation steps.
    """
    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.models import resolve_model

    identity = {"model": resolve_model(model).identity}
    return Subject(functools.cache(lambda: PFDCalculator(model)), identity, trained_on)


def trained_structures(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Structures each model of a run learnt from: ``PF`` (initial data and fine-tune
    stages) and ``PFD`` (the teacher-labelled exploration of distillation)."""
    teacher = list(config["init"]["structures"] or config["structures"])
    for stage in config["finetune"]["stages"]:
        teacher += [s for s in stage["structures"] if s not in teacher]
    return {"PF": teacher, "PFD": list(config["distill"]["explore"]["structures"])}


def validate_run(
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    title: str,
    preset: Mapping[str, Any],
    phonons: Mapping[str, Any],
    vacancies: Mapping[str, Any],
    **info: Any,
) -> dict[str, Any]:
    """Validate a finished run and write its report folder (``workdir/report``).

    Errors (teacher and student vs DFT, student vs teacher) with parity plots, the entropy
    curve, phonons (DFT, PF, PFD) and vacancy formation energies (PF, PFD, and the labeler
    when it is classical); phonons and vacancies are resumable steps ``validate.<key>`` of
    the run directory (see :func:`validation_step`), the labeler's files go to
    ``workdir/validation/labeler``.

    Parameters
    ----------
    config
        The recipe's workflow configuration.
    summary
        The run's summary (``teacher``, ``student``, ``steps``).
    title
        The report's heading.
    preset
        ``dft_phonon_supercell`` (a classical labeler always gets 3×3×3) and
        ``vacancy_max_steps``.
    phonons
        ``{"primitive": Atoms, "title": str}``.
    vacancies
        ``{"cells": {phase: Atoms}, "reference": Atoms, "title": str}``.
    **info
        Recorded at the top of the results (e.g. ``quick``).

    Returns
    -------
    dict
        The JSON-safe results, as in ``report/summary.json``.
    """
    from pfd_ase.analysis.phonons import phonon_labeler
    from pfd_ase.analysis.report import write_report
    from pfd_ase.analysis.validate import (
        compare_phonons,
        compare_vacancies,
        entropy_curve,
        model_errors,
        plot_entropy,
    )
    from pfd_ase.calculators import labeler_info
    from pfd_ase.data import read_frames

    workdir = Path(config["workdir"])
    report, folder = workdir / "report", workdir / "validation"
    report.mkdir(parents=True, exist_ok=True)
    teacher, student = summary["teacher"], summary.get("student")
    data = read_frames(workdir / "data" / "labelled.extxyz")
    sets = {"teacher_vs_dft": (teacher, data)}
    if student:
        sets["student_vs_dft"] = (student, data)
        teacher_labelled = workdir / "distill" / "teacher_labelled.extxyz"
        if teacher_labelled.exists():
            sets["student_vs_teacher"] = (student, read_frames(teacher_labelled))
    result: dict[str, Any] = {"teacher": teacher, "student": student, **info}
    result["labeler"] = config["labeler"]["name"]
    result["base_model"] = config["base_model"]["path"]
    result["errors"] = model_errors(sets, report)
    result["entropy_per_iteration"] = entropy_curve(summary)
    plot_entropy(result["entropy_per_iteration"], report / "entropy.png")

    trained = trained_structures(config)
    models = {"PF": model_subject(teacher, trained["PF"])}
    if student:
        models["PFD"] = model_subject(student, trained["PFD"])
    name, overrides = config["labeler"]["name"], config["labeler"]["overrides"]
    reference = phonon_labeler(name, folder / "labeler", **overrides)
    dft = {"DFT": Subject(lambda: reference, {"labeler": labeler_info(reference)})}
    cheap = name in CLASSICAL
    step = validation_step(workdir)
    bands = compare_phonons(
        phonons["primitive"],
        {**dft, **models},
        {
            "DFT": (3, 3, 3) if cheap else preset["dft_phonon_supercell"],
            **dict.fromkeys(models, (3, 3, 3)),
        },
        step=step,
        plot=report / "phonons.png",
        title=phonons["title"],
    )
    result["phonons"] = {
        k: {"special_points": v["special_points"], "supercell": v["supercell"]}
        for k, v in bands.items()
    }
    result |= compare_vacancies(
        vacancies["cells"],
        {**models, **(dft if cheap else {})},
        vacancies["reference"],
        step=step,
        plot=report / "vacancies.png",
        title=vacancies["title"],
        max_steps=preset["vacancy_max_steps"],
    )
    result["run_summary"] = str(workdir / "summary.json")
    write_report(report, result, title)
    return result


def recipe_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The command line every workflow recipe shares (``--quick``, ``--labeler`` ...)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default=f"runs/{prog.rsplit('.', 1)[-1]}")
    parser.add_argument("--quick", action="store_true", help="laptop-sized settings")
    parser.add_argument("--labeler", default="gpaw", help="gpaw (default), vasp, sw, tersoff")
    parser.add_argument("--labeler-overrides", default="{}", help="JSON, e.g. '{\"encut\": 520}'")
    parser.add_argument(
        "--base-model",
        default="chgnet",
        help="'chgnet' (default, offline), a deepmd-kit .pt, or a registry name",
    )
    parser.add_argument("--head", default=None, help="branch of a multi-task base model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overrides", default="{}", help="JSON merged into the workflow config")
    return parser


def parsed_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict[str, Any]:
    """:func:`recipe_parser`'s arguments as keyword arguments of a recipe's run function."""
    args = vars(parser.parse_args(argv))
    for key in ("labeler_overrides", "overrides"):
        args[key] = json.loads(args[key])
    return args
