"""Shared recipe machinery: presets, structures for the workflow, validation and report.

A recipe is config → :func:`pfd_ase.workflow.run` → :func:`validate_run` → report
(:func:`run_recipe` does the three); this module holds what every recipe needs for that:
:func:`deep_update` (presets merged with user overrides), the resumable validation steps
(:func:`validation_step`, :func:`model_subject`), the labeler's references computed beside
the workflow (:func:`references_beside`, :func:`reference_steps`), the diffusion runs
(:func:`diffusion_validation`) and :func:`recipe_parser` for the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pfd_ase.analysis.validate import Step, Subject
from pfd_ase.data import read_frames, write_frames
from pfd_ase.threads import child_threads, lend_cores

if TYPE_CHECKING:
    from pfd_ase.workflow.state import RunState

#: Labelers cheap enough for vacancy relaxations and 3×3×3 phonons in any preset.
CLASSICAL = ("sw", "tersoff", "emt")
#: The recipes' base model (functions, command lines, ``bench/silicon_accuracy.py``): SevenNet-0
#: (quick GPAW silicon held-out set, fine-tuned: 27 meV/atom, phonons within 2.0 THz, against
#: CHGNet's 44 meV/atom and 3.0 THz).
DEFAULT_BASE_MODEL = "7net-0"
#: The settings a preset's ``validation`` may hold (:func:`validate_run`,
#: :func:`references_beside`).
VALIDATION_KEYS = frozenset(
    (
        "test_set",
        "dh_vs_error",
        "dft_phonon_supercell",
        "vacancy_max_steps",
        "dft_vacancy",
        "concurrent_references",
    )
)


def deep_update(base: Mapping[str, Any], updates: Mapping[str, Any] | None) -> dict[str, Any]:
    """Recursively merge ``updates`` into a copy of ``base`` (user overrides win)."""
    out = copy.deepcopy(dict(base))
    for key, value in (updates or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def recipe_config(
    workflow: Mapping[str, Any],
    *,
    workdir: str | os.PathLike,
    seed: int,
    type_map: list[str],
    structures: Mapping[str, Any],
    labeler: str,
    preset_labelers: Mapping[str, Mapping[str, Any]],
    labeler_overrides: Mapping[str, Any] | None,
    base_model: str,
    head: str | None,
    overrides: Mapping[str, Any] | None,
    **sections: Any,
) -> dict[str, Any]:
    """A recipe's workflow configuration: the preset's ``workflow`` settings, the run's
    identity (workdir, seed, elements, structures, base model), the labeler with the
    preset's settings for it (``preset_labelers[labeler]``) under the user's, the recipe's
    ``sections`` (``init``, ``finetune``, ``distill`` ...), then the user's ``overrides``."""
    config = deep_update(
        workflow,
        {
            "workdir": str(workdir),
            "seed": seed,
            "type_map": list(type_map),
            "structures": dict(structures),
            "labeler": {
                "name": labeler,
                "overrides": {
                    **preset_labelers.get(labeler, {}),
                    **(labeler_overrides or {}),
                },
            },
            "base_model": {"path": base_model, "head": head},
            **sections,
        },
    )
    return deep_update(config, overrides)


def validation_step(run: str | Path | RunState) -> Step:
    """The :data:`~pfd_ase.analysis.validate.Step` of a run directory: its resumable steps.

    Each result is the step ``validate.<key>`` of :meth:`RunState.run_step
    <pfd_ase.workflow.state.RunState.run_step>` (record ``state/validate.<key>.json``), redone
    when its inputs (model identity, labeler settings, supercell ...) change. ``run`` is the
    run directory or its :class:`~pfd_ase.workflow.state.RunState` (pass the one object a
    caller already holds: each object keeps its own copy of ``summary.json``).
    """
    from pfd_ase.workflow.state import RunState

    state = run if isinstance(run, RunState) else RunState(run)

    def step(key: str, func: Callable[[], Any], inputs: Mapping[str, Any]) -> Any:
        return state.run_step(f"validate.{key}", lambda: {"result": func()}, inputs)["result"]

    return step


def model_subject(
    model: str, trained_on: list[str] | None = None, head: str | None = None
) -> Subject:
    """A trained model (path or pre-trained name) to validate, loaded on first use.

    Its identity is :func:`pfd_ase.models.resolve_model`'s (a content hash): a retrained
    model at the same path redoes its validation steps.
    """
    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.models import resolve_model

    identity = {"model": resolve_model(model, head=head).identity}
    return Subject(functools.cache(lambda: PFDCalculator(model, head=head)), identity, trained_on)


def trained_structures(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Structures each model of a run learnt from: ``PF`` (initial data and fine-tune
    stages) and ``PFD`` (the teacher-labelled exploration of distillation)."""
    teacher = list(config["init"]["structures"] or config["structures"])
    for stage in config["finetune"]["stages"]:
        teacher += [s for s in stage["structures"] if s not in teacher]
    student = config["distill"]["explore"]["structures"] or config["structures"]
    return {"PF": teacher, "PFD": list(student)}


def held_out_test(
    config: Mapping[str, Any],
    models: Mapping[str, tuple[str, str | None]],
    settings: Mapping[str, Any],
    report: str | os.PathLike,
    step: Step | None = None,
) -> dict[str, Any]:
    """Label the run's held-out test set and score ``models`` on it (resumable).

    :func:`pfd_ase.analysis.testset.make_test_set` of every structure of the run (seeds no
    training step draws) is labelled by the run's labeler in ``workdir/test`` (one task
    folder per frame, reused on a rerun; failed frames are recorded and left out) and written
    to ``workdir/test/labelled.extxyz``; the scores are the step ``validate.held_out`` (redone
    when a model or the frames change). A test folder of other frames (the test-set settings
    changed) is moved aside to ``test.replaced`` (``.replaced.1``, ...), never deleted.

    Parameters
    ----------
    config
        The recipe's workflow configuration (``structures``, ``seed``, ``labeler``, and
        ``executor`` if any).
    models
        Name (``"base"``, ``"PF"``, ``"PFD"``) → (model path or name, head).
    settings
        ``n_frames`` per structure, and optionally ``cell_strain``, ``displacement_A`` and
        ``structures`` (the names tested; default: all of the run's).
    report
        The report folder (parity plots ``parity_test_<name>.png``).
    step
        The run directory's steps (:func:`validation_step`; default: a new one).

    Returns
    -------
    dict
        ``test_set`` (``path``, ``n_frames``, ``failures``: ``frame_id`` and ``kind`` of
        each frame the labeler failed on) and ``held_out`` (name →
        :func:`~pfd_ase.analysis.testset.score_models`).
    """
    from pfd_ase.analysis.testset import score_models
    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.models import resolve_model
    from pfd_ase.workflow.state import frames_identity

    step = step or validation_step(config["workdir"])
    path, done = label_test_set(config, settings, step)
    labelled = read_frames(path)
    identities = {n: resolve_model(m, head=h).identity for n, (m, h) in models.items()}

    def score() -> dict[str, Any]:
        calcs = {n: PFDCalculator(m, head=h) for n, (m, h) in models.items()}
        return score_models(calcs, labelled, report)

    scores = step("held_out", score, {"frames": frames_identity(labelled), **identities})
    return {
        "test_set": {"path": str(path), **done},
        "held_out": scores,
    }


def label_test_set(
    config: Mapping[str, Any], settings: Mapping[str, Any], step: Step
) -> tuple[Path, dict[str, Any]]:
    """The held-out test set's labels: the step ``validate.test_label`` of :func:`held_out_test`.

    Returns
    -------
    tuple
        The labelled frames' file and the step's result (``n_frames``, ``failures``).
    """
    from pfd_ase.analysis.testset import make_test_set
    from pfd_ase.label import label_frames
    from pfd_ase.parallel import make_executor
    from pfd_ase.structures import build_structure
    from pfd_ase.workflow.state import frames_identity

    folder = Path(config["workdir"]) / "test"
    path = folder / "labelled.extxyz"
    names = settings.get("structures") or list(config["structures"])
    structures = {k: build_structure(config["structures"][k]) for k in names}
    options = {k: settings[k] for k in ("cell_strain", "displacement_A") if k in settings}
    frames = make_test_set(structures, int(settings["n_frames"]), int(config["seed"]), **options)
    labeler = (config["labeler"]["name"], dict(config["labeler"]["overrides"]))

    def label() -> dict[str, Any]:
        with make_executor(config.get("executor")) as executor:
            # another test set (changed settings) is kept aside as test.replaced
            result = label_frames(frames, labeler, folder, executor, replace_mismatched=True)
        write_frames(path, result.frames)
        return {
            "n_frames": len(result.frames),
            "failures": [{"frame_id": f["frame_id"], "kind": f["kind"]} for f in result.failures],
        }

    return path, step("test_label", label, {"frames": frames_identity(frames), "labeler": labeler})


def preset_of(presets: Mapping[str, Any], name: str) -> Any:
    """The preset ``name`` of a recipe's ``presets``; a ``ValueError`` naming the known ones."""
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; known: {list(presets)}")
    return presets[name]


def check_validation(overrides: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """``overrides`` of a preset's validation settings, unless a key is unknown
    (:data:`VALIDATION_KEYS`): then a ``ValueError`` naming it."""
    unknown = set(overrides or {}) - VALIDATION_KEYS
    if unknown:
        known = sorted(VALIDATION_KEYS)
        raise ValueError(f"validation: unknown setting(s) {sorted(unknown)}; known: {known}")
    return overrides


def run_recipe(
    config: Mapping[str, Any],
    title: str,
    validation: Mapping[str, Any],
    validation_overrides: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """A recipe's workflow, then :func:`validate_run` (``kwargs``: its other arguments), under
    one run lock (one run per directory, across the run and its validation). With a DFT
    labeler the validation's labeler references run beside the workflow
    (:func:`references_beside`); the workflow's wait for them at its end is recorded as
    ``references_wait_s``. ``validation_overrides`` (a user's, e.g. ``{"test_set":
    {"n_frames": 1}}``) are merged into the preset's ``validation``
    (:func:`deep_update`); keys it does not know are refused before any work."""
    from pfd_ase.workflow import load_config, run
    from pfd_ase.workflow.lock import run_lock

    validation = deep_update(validation, check_validation(validation_overrides))
    with run_lock(config["workdir"]):
        load_config(config)  # bad input: its error before any process starts
        with references_beside(
            config, validation, kwargs.get("phonons"), kwargs.get("vacancies")
        ) as beside:
            summary = run(config)
        if beside.process is not None:  # the workflow's wait for them: on the critical path
            kwargs["references_wait_s"] = round(beside.waited_s, 1)
        return validate_run(config, summary, title, validation, **kwargs)


def validate_run(
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    title: str,
    validation: Mapping[str, Any],
    phonons: Mapping[str, Any] | None,
    vacancies: Mapping[str, Any] | None,
    diffusion: Mapping[str, Any] | None = None,
    phase_study: Mapping[str, Any] | None = None,
    quench_study: Mapping[str, Any] | None = None,
    **info: Any,
) -> dict[str, Any]:
    """Validate a finished run and write its report folder (``workdir/report``).

    Errors on the held-out test set (base, PF and PFD models, :func:`held_out_test`),
    errors on the training data (teacher and student vs DFT, student vs teacher) with parity
    plots, the entropy curve, phonons (DFT, PF, PFD) and vacancy formation energies (PF,
    PFD, and the labeler when it is classical); phonons and vacancies are resumable steps
    ``validate.<key>`` of the run directory (see :func:`validation_step`), the labeler's
    files go to ``workdir/validation/labeler``.

    Parameters
    ----------
    config
        The recipe's workflow configuration.
    summary
        The run's summary (``teacher``, ``student``, ``steps``).
    title
        The report's heading.
    validation
        The preset's validation settings: ``dft_phonon_supercell`` (the DFT's and the
        models' phonon supercell, so that Γ, X and L are compared in the same one; a
        classical labeler always gets 3×3×3), ``vacancy_max_steps``, ``test_set`` (the
        settings of :func:`held_out_test`; no held-out scores when missing) and
        ``dft_vacancy`` (``{"phase": name, "relax": bool}``: the labeler's own vacancy
        formation energy of that phase, unrelaxed unless ``relax``, with the models' computed
        the same way beside it in ``vacancy_vs_dft`` (:func:`vacancy_versus_dft`); a
        classical labeler does every phase).
    phonons
        ``{"primitive": Atoms, "title": str}``; ``None``: no phonons.
    vacancies
        ``{"cells": {phase: Atoms}, "reference": Atoms, "title": str}``; ``None``: none.
    diffusion
        The settings of :func:`diffusion_validation`; ``None``: no diffusion runs.
    phase_study
        ``{"structures": {phase: Atoms}, "settings": {...}}`` of :func:`phase_validation`
        (base, PF and PFD, and the labeler unless ``settings["dft"]`` is false); ``None``:
        none.
    quench_study
        ``{"starts": [Atoms], "settings": {...}}`` of :func:`quench_validation` (PF, PFD
        and the labeler); ``None``: none.
    **info
        Recorded at the top of the results (e.g. ``preset``).

    Returns
    -------
    dict
        The JSON-safe results, as in ``report/summary.json``.
    """
    from pfd_ase.analysis.report import write_report
    from pfd_ase.analysis.validate import (
        compare_phonons,
        compare_vacancies,
        entropy_curve,
        model_errors,
        plot_entropy,
        stage_walls,
    )
    from pfd_ase.calculators import labeler_info
    from pfd_ase.structures import build_structure
    from pfd_ase.workflow.state import RunState

    workdir = Path(config["workdir"])
    report, folder = workdir / "report", _validation_folder(config)
    report.mkdir(parents=True, exist_ok=True)
    state = RunState(workdir)  # one object: every validation step records into it
    step = validation_step(state)
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
    if validation.get("test_set"):
        base = config["base_model"]
        held = {"base": (base["path"], base.get("head")), "PF": (teacher, None)}
        if student:
            held["PFD"] = (student, None)
        result |= held_out_test(config, held, validation["test_set"], report, step)
        if validation.get("dh_vs_error"):
            result["dh_vs_error"] = dh_validation(
                config, held, validation["dh_vs_error"], report, step
            )
    result["cells"] = {  # what the preset chose: atoms per structure
        name: len(build_structure(atoms)) for name, atoms in config["structures"].items()
    }
    result["entropy_per_iteration"] = entropy_curve(summary)
    plot_entropy(result["entropy_per_iteration"], report / "entropy.png")

    trained = trained_structures(config)
    models = {"PF": model_subject(teacher, trained["PF"])}
    if student:
        models["PFD"] = model_subject(student, trained["PFD"])
    name, overrides = config["labeler"]["name"], config["labeler"]["overrides"]
    dft = {"DFT": labeler_subject(config)}
    cheap = name in CLASSICAL
    if phonons is not None:
        phonon_sc = _phonon_supercell(config, validation)
        bands = compare_phonons(
            phonons["primitive"],
            {**dft, **models},
            {
                "DFT": phonon_sc,
                **dict.fromkeys(models, phonon_sc),  # Γ, X, L compared in the same supercell
            },
            step=step,
            plot=report / "phonons.png",
            title=phonons["title"],
            folder=folder / "phonons",
        )
        result["phonons"] = {
            k: {"special_points": v["special_points"], "supercell": v["supercell"]}
            for k, v in bands.items()
        }
        result |= bands.summary  # every branch at Γ/X/L against DFT's, C_v and F_vib at 300 K
    if vacancies is not None:
        result |= compare_vacancies(
            vacancies["cells"],
            {**models, **(dft if cheap else {})},
            vacancies["reference"],
            step=step,
            plot=report / "vacancies.png",
            title=vacancies["title"],
            max_steps=validation["vacancy_max_steps"],
        )
        dft_vacancy = validation.get("dft_vacancy")
        if not cheap and dft_vacancy:  # DFT: one phase, relaxed only where the preset pays for it
            phase = dft_vacancy["phase"]
            own = _labeler_vacancy(vacancies, validation, dft, step)
            for key, value in own.items():
                result.setdefault(key, {}).update(value)
            relaxed = bool(dft_vacancy.get("relax", False))
            if not relaxed:  # the models the DFT's way too: unrelaxed, in the same cell
                same_way = compare_vacancies(
                    {phase: vacancies["cells"][phase]},
                    {f"{m}_unrelaxed": s for m, s in models.items()},
                    vacancies["reference"],
                    step=step,
                    relax=False,
                    stability_check=False,
                )["vacancy_formation_eV"]
                models_e = {m: same_way[f"{m}_unrelaxed"][phase] for m in models}
            else:
                models_e = {m: result["vacancy_formation_eV"][m][phase] for m in models}
            result["vacancy_vs_dft"] = vacancy_versus_dft(
                phase, relaxed, result["vacancy_formation_eV"]["DFT"][phase], models_e
            )
    if phase_study is not None:
        from pfd_ase.calculators import make_labeler
        from pfd_ase.calculators.labelers import molecule_labeler

        symmetric = functools.cache(lambda: make_labeler(name, folder / "phases", **overrides))
        base = config["base_model"]
        study = dict(phase_study["settings"])
        multiplicity = int(study.get("defect", {}).get("multiplicity", 1))
        result |= phase_validation(
            phase_study["structures"],
            {"base": model_subject(base["path"], head=base.get("head")), **models},
            study,
            step,
            report,
            labeler=dft["DFT"] if study.get("dft", True) else None,
            molecule_labeler=lambda: molecule_labeler(
                name, folder / "labeler" / "molecule", multiplicity, **overrides
            ),
            symmetric_labeler=Subject(symmetric, {"labeler": labeler_info(symmetric())}),
        )
    if quench_study is not None:
        result |= quench_validation(
            list(quench_study["starts"]), models, quench_study["settings"], step, report, dft["DFT"]
        )
    if diffusion is not None:
        paths = {"PF": teacher, **({"PFD": student} if student else {})}
        result["diffusion"] = diffusion_validation(paths, diffusion, folder / "diffusion", report)
    result["run_summary"] = str(workdir / "summary.json")
    # wall time per stage, validation included (the steps this call recorded)
    result["stage_wall_s"] = stage_walls(state.summary)
    write_report(report, result, title)
    return result


def _validation_folder(config: Mapping[str, Any]) -> Path:
    """``workdir/validation``: the labeler's files and the phonopy files (a phonon step's
    inputs name its folder, so :func:`reference_steps` and :func:`validate_run` share it)."""
    return Path(config["workdir"]) / "validation"


def labeler_subject(config: Mapping[str, Any]) -> Subject:
    """The run's labeler as the validation's ``DFT`` subject (one calculator shared by its
    phonon supercells, :func:`pfd_ase.analysis.phonons.phonon_labeler`; files in
    ``workdir/validation/labeler``)."""
    from pfd_ase.analysis.phonons import phonon_labeler
    from pfd_ase.calculators import labeler_info

    name, overrides = config["labeler"]["name"], config["labeler"]["overrides"]
    reference = phonon_labeler(name, _validation_folder(config) / "labeler", **overrides)
    return Subject(lambda: reference, {"labeler": labeler_info(reference)})


def _phonon_supercell(config: Mapping[str, Any], validation: Mapping[str, Any]) -> tuple:
    """The supercell of every subject's phonons: 3×3×3 with a classical labeler, else the
    preset's ``dft_phonon_supercell``."""
    if config["labeler"]["name"] in CLASSICAL:
        return (3, 3, 3)
    return tuple(validation["dft_phonon_supercell"])


def _labeler_vacancy(
    vacancies: Mapping[str, Any],
    validation: Mapping[str, Any],
    dft: Mapping[str, Subject],
    step: Step,
) -> dict[str, Any]:
    """The labeler's own vacancy formation energy of the preset's ``dft_vacancy`` phase
    (step ``validate.vacancies_DFT``; relaxed only where the preset says so)."""
    from pfd_ase.analysis.validate import compare_vacancies

    phase = validation["dft_vacancy"]["phase"]
    return compare_vacancies(
        {phase: vacancies["cells"][phase]},
        dft,
        vacancies["reference"],
        step=step,
        relax=bool(validation["dft_vacancy"].get("relax", False)),
        stability_check=False,
        max_steps=validation["vacancy_max_steps"],
    )


def reference_steps(
    config: Mapping[str, Any],
    validation: Mapping[str, Any],
    phonons: Mapping[str, Any] | None,
    vacancies: Mapping[str, Any] | None,
    step: Step,
) -> list[str]:
    """Run the validation steps that depend on the labeler alone, never on a model.

    The held-out test set's labels (:func:`label_test_set`), the labeler's phonons and, with
    a DFT labeler and ``validation["dft_vacancy"]``, its vacancy formation energy: the same
    steps, with the same inputs, that :func:`validate_run` takes, so that it reuses them.
    Arguments as :func:`validate_run`'s. Returns the keys of the steps run or reused.
    """
    from pfd_ase.analysis.validate import compare_phonons

    keys = []
    if validation.get("test_set"):
        label_test_set(config, validation["test_set"], step)
        keys.append("test_label")
    dft = {"DFT": labeler_subject(config)}
    if phonons is not None:
        compare_phonons(
            phonons["primitive"],
            dft,
            {"DFT": _phonon_supercell(config, validation)},
            step=step,
            folder=_validation_folder(config) / "phonons",
        )
        keys.append("phonons_DFT")
    if vacancies is not None and config["labeler"]["name"] not in CLASSICAL:
        if validation.get("dft_vacancy"):
            _labeler_vacancy(vacancies, validation, dft, step)
            keys.append("vacancies_DFT")
    return keys


def _reference_worker(
    config: Mapping[str, Any],
    validation: Mapping[str, Any],
    phonons: Mapping[str, Any] | None,
    vacancies: Mapping[str, Any] | None,
) -> None:
    """Body of the process of :func:`references_beside`: :func:`reference_steps` through
    :func:`concurrent_step`, labelling through :func:`beside_executor`."""
    from pfd_ase.processes import die_with_parent

    die_with_parent()
    step = concurrent_step(config["workdir"])
    config = {**config, "executor": beside_executor(config.get("executor"))}
    reference_steps(config, validation, phonons, vacancies, step)


def beside_executor(spec: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The executor the references beside a run label with: the run's own where it sends
    work elsewhere (Slurm, a Dask scheduler's ``address``), else none (this one process:
    the run has the machine's other cores)."""
    spec = dict(spec or {})
    remote = spec.get("kind") == "slurm" or (spec.get("kind") == "dask" and spec.get("address"))
    return spec if remote else None


def concurrent_step(run: str | Path) -> Step:
    """:func:`validation_step` for a process beside the run's own: records only (no
    ``summary.json``, see :class:`~pfd_ase.workflow.state.RunState`), each marked
    ``concurrent`` (:func:`pfd_ase.analysis.validate.stage_walls` sums them apart)."""
    from pfd_ase.workflow.state import RunState

    state = RunState(run, records_only=True)

    def step(key: str, func: Callable[[], Any], inputs: Mapping[str, Any]) -> Any:
        record = state.run_step(
            f"validate.{key}", lambda: {"result": func(), "concurrent": True}, inputs
        )
        return record["result"]

    return step


@dataclasses.dataclass
class Beside:
    """What :func:`references_beside` yields: its ``process`` (``None`` when none runs) and,
    once the body has left, ``waited_s``, how long the body's end waited for it (s)."""

    process: multiprocessing.process.BaseProcess | None
    waited_s: float = 0.0


@contextlib.contextmanager
def references_beside(
    config: Mapping[str, Any],
    validation: Mapping[str, Any],
    phonons: Mapping[str, Any] | None = None,
    vacancies: Mapping[str, Any] | None = None,
) -> Iterator[Beside]:
    """Compute :func:`reference_steps` in a background process while the body runs.

    The labeler's validation references (held-out labels, phonons, vacancy) need no model,
    so with a DFT labeler they run on one core beside the workflow (or through the run's
    Slurm or remote Dask executor, :func:`beside_executor`), whose deepmd-kit and
    small-cell trainings leave a core mostly idle; while the process runs, the body's steps
    compute on the other cores (:func:`pfd_ase.threads.lend_cores`: threads beyond the cores
    spin and slowed SevenNet MD 2.6x). :func:`validate_run` then reuses their
    records (marked ``concurrent``: their wall time overlaps the other stages'). Leaving the
    body waits for the process; if the body raises, the process is stopped (its finished
    steps stay recorded, a labelling step resumes from its task folders). A failed process
    is reported (``RuntimeWarning``) and changes nothing: the validation computes what is
    missing. Nothing runs with a classical labeler or ``validation["concurrent_references"]``
    false.
    """
    if config["labeler"]["name"] in CLASSICAL or not validation.get("concurrent_references", True):
        yield Beside(None)
        return
    ctx = multiprocessing.get_context("spawn")
    args = (config, validation, phonons, vacancies)
    beside = Beside(ctx.Process(target=_reference_worker, args=args, name="pfd-references"))
    with child_threads(1):  # one thread: the run has the other cores
        beside.process.start()
    # the references compute here, on one core, unless they label elsewhere (Slurm, Dask)
    local = beside_executor(config.get("executor")) is None
    try:
        with lend_cores(1 if local else 0, beside.process.is_alive):
            yield beside
    except BaseException:
        beside.process.terminate()
        beside.process.join()
        raise
    t0 = time.perf_counter()
    beside.process.join()
    beside.waited_s = time.perf_counter() - t0
    if beside.process.exitcode != 0:
        warnings.warn(
            f"the labeler's validation references beside the run failed (exit code "
            f"{beside.process.exitcode}, its traceback above); the validation computes them",
            RuntimeWarning,
            stacklevel=3,
        )


def dh_validation(
    config: Mapping[str, Any],
    models: Mapping[str, tuple[str, str | None]],
    settings: Mapping[str, Any],
    report: str | os.PathLike,
    step: Step,
) -> dict[str, Any]:
    """dH of held-out atoms against the teacher's training data, beside each model's force
    error on them (PFD supplement Fig. S13; :func:`pfd_ase.analysis.dh.dh_versus_error`).

    The held-out frames (``workdir/test/labelled.extxyz``, :func:`held_out_test`) of
    ``settings["structures"]`` (default: all) against every labelled frame of the run
    (``workdir/data/labelled.extxyz``: what the fine-tuned model learnt from); models
    ``settings["models"]`` (default ``["PF", "base"]``). Resumable step
    ``validate.dh_vs_error``; figure ``dh_error.png``.

    Returns
    -------
    dict
        :func:`~pfd_ase.analysis.dh.dh_versus_error` without the per-atom points (kept in
        the step's record), plus ``structures``.
    """
    from pfd_ase.analysis.dh import dh_versus_error, plot_dh_versus_error
    from pfd_ase.analysis.testset import structure_of
    from pfd_ase.calculators import PFDCalculator
    from pfd_ase.data import read_frames
    from pfd_ase.models import resolve_model
    from pfd_ase.workflow.state import frames_identity

    workdir = Path(config["workdir"])
    wanted = settings.get("structures")
    test = [
        a
        for a in read_frames(workdir / "test" / "labelled.extxyz")
        if wanted is None or structure_of(a) in wanted
    ]
    if not test:
        raise ValueError(f"no held-out frames of {wanted} to compute dH on")
    train = read_frames(workdir / "data" / "labelled.extxyz")
    names = list(settings.get("models", ["PF", "base"]))
    chosen = {n: models[n] for n in names if n in models}
    identities = {n: resolve_model(m, head=h).identity for n, (m, h) in chosen.items()}

    def run() -> dict[str, Any]:
        calcs = {n: PFDCalculator(m, head=h) for n, (m, h) in chosen.items()}
        return dh_versus_error(train, test, calcs)

    record = step(
        "dh_vs_error",
        run,
        {"test": frames_identity(test), "train": frames_identity(train), **identities},
    )
    first = next(iter(chosen))
    plot_dh_versus_error(record, Path(report) / "dh_error.png", first)
    out = {k: v for k, v in record.items() if k != "points"}
    return {**out, "structures": wanted}


def diffusion_validation(
    models: Mapping[str, str],
    settings: Mapping[str, Any],
    folder: str | os.PathLike,
    report: str | os.PathLike,
) -> dict[str, Any]:
    """D(T) and the activation energy of each model, from its own MD.

    :func:`pfd_ase.analysis.diffusion.diffusion_study` for each run: every model in the
    small cell at ``compare["temperatures_K"]`` (the supplement's Fig. S6: PF and PFD side
    by side, ``compare["n_runs"]`` runs each); the student (PFD) also in the large cell at
    every temperature of ``temperatures_K``, ``n_runs`` runs each. Resumable (walker
    folders under ``folder/<run>/<model hash>``: a model retrained at the same path runs
    anew).

    Parameters
    ----------
    models
        Name → model path (``"PF"``, ``"PFD"``).
    settings
        ``species``; ``structure`` (the small cell) and ``large`` (``None``: no large-cell
        runs); ``temperatures_K``, ``n_runs``, ``steps``, ``timestep_fs``,
        ``sample_every``, ``equilibration_steps`` of the large-cell runs; ``compare``: the
        same keys overriding them for the small-cell runs.
    folder, report
        Where the runs go; where ``arrhenius.png`` and ``msd_<run>.png`` go.

    Returns
    -------
    dict
        ``<model>_small`` and ``PFD_large``: :meth:`DiffusionStudy.summary
        <pfd_ase.analysis.diffusion.DiffusionStudy.summary>`, each with ``n_atoms``.
    """
    import hashlib
    import shutil

    from pfd_ase.analysis.diffusion import diffusion_study, plot_arrhenius
    from pfd_ase.models import resolve_model
    from pfd_ase.structures import build_structure

    keys = ("temperatures_K", "n_runs", "steps", "timestep_fs", "sample_every")
    keys += ("equilibration_steps",)
    large = {k: settings[k] for k in keys if k in settings}
    small = {**large, **dict(settings.get("compare", {}))}
    runs = {f"{name}_small": (path, settings["structure"], small) for name, path in models.items()}
    if settings.get("large") is not None and "PFD" in models:
        runs["PFD_large"] = (models["PFD"], settings["large"], large)
    folder, report = Path(folder), Path(report)
    out: dict[str, Any] = {}
    fits, labels = [], []
    for key, (path, structure, settings_of_run) in runs.items():
        options = dict(settings_of_run)
        atoms = build_structure(structure)
        # one folder per model content: a model retrained at the same path runs anew
        identity = resolve_model(path).identity
        where = folder / key / hashlib.sha256(identity.encode()).hexdigest()[:12]
        study = diffusion_study(
            ("pfd", {"model": path}),
            atoms,
            settings["species"],
            options.pop("temperatures_K"),
            where,
            label=key,
            **options,
        )
        out[key] = {"n_atoms": len(atoms), "model_identity": identity, **study.summary()}
        msd_png = where / "msd.png"
        if msd_png.exists():
            shutil.copyfile(msd_png, report / f"msd_{key}.png")
        if study.arrhenius is not None:
            fits.append(study.arrhenius)
            labels.append(f"{key} ({len(atoms)} atoms)")
    if fits:
        plot_arrhenius(fits, labels, report / "arrhenius.png")
    return out


def vacancy_versus_dft(
    phase: str, relaxed: bool, dft_eV: float | None, models_eV: Mapping[str, float | None]
) -> dict[str, Any]:
    """Each model's vacancy formation energy against the DFT's, computed the same way
    (``relaxed`` or not, the same cell): ``{"phase", "relaxed", "E_f_eV": {name: E_f},
    "error_eV": {model: E_f - E_f(DFT)}}`` (``None`` where either is missing)."""
    errors = {
        m: None if e is None or dft_eV is None else float(e - dft_eV) for m, e in models_eV.items()
    }
    return {
        "phase": phase,
        "relaxed": relaxed,
        "E_f_eV": {"DFT": dft_eV, **models_eV},
        "error_eV": errors,
    }


def recipe_parser(
    prog: str, description: str | None, labeler: str | None = "gpaw"
) -> argparse.ArgumentParser:
    """The command line every workflow recipe shares (``--quick``, ``--labeler`` ...).

    ``--quick``, ``--production`` and ``--preset NAME`` choose the ``preset`` keyword of
    the recipe's run function (``"default"`` without any). ``labeler`` is the default of
    ``--labeler`` (``None``: the preset's).
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default=f"runs/{prog.rsplit('.', 1)[-1]}")
    presets = parser.add_mutually_exclusive_group()
    presets.add_argument(
        "--quick", dest="preset", action="store_const", const="quick", help="minutes: a smoke test"
    )
    presets.add_argument(
        "--production",
        dest="preset",
        action="store_const",
        const="production",
        help="the paper's settings (cluster-sized)",
    )
    presets.add_argument("--preset", dest="preset", help="any preset of the recipe, by name")
    parser.set_defaults(preset="default")
    shown = labeler or "the preset's"
    parser.add_argument(
        "--labeler",
        default=labeler,
        help=f"vasp, gpaw, gpaw-lcao, xtb, sw, tersoff, emt (default: {shown})",
    )
    parser.add_argument("--labeler-overrides", default="{}", help="JSON, e.g. '{\"encut\": 520}'")
    parser.add_argument(
        "--base-model",
        default=DEFAULT_BASE_MODEL,
        help="'7net-0' (SevenNet-0, default, offline), 'chgnet', a deepmd-kit .pt, or a "
        "registry name",
    )
    parser.add_argument("--head", default=None, help="branch of a multi-task base model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overrides", default="{}", help="JSON merged into the workflow config")
    return parser


def recipe_main(
    prog: str,
    description: str | None,
    run: Callable[..., dict[str, Any]],
    keys: tuple[str, ...],
    argv: list[str] | None = None,
    labeler: str | None = "gpaw",
) -> dict[str, Any]:
    """A recipe's command line: parse ``argv`` (:func:`recipe_parser`), tune the allocator
    (:func:`pfd_ase.allocator.tune_allocator`), ``run(**args)``, print the results under
    ``keys`` as JSON and the report's path; return the results."""
    from pfd_ase.allocator import tune_allocator

    args = parsed_arguments(recipe_parser(prog, description, labeler=labeler), argv)
    tune_allocator()  # large model calls: keep freed memory (pfd_ase.allocator)
    result = run(**args)
    print(json.dumps({k: result.get(k) for k in keys}, indent=2, default=str))
    print(f"report: {Path(args['workdir']) / 'report' / 'report.md'}")
    return result


def parsed_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict[str, Any]:
    """:func:`recipe_parser`'s arguments as keyword arguments of a recipe's run function."""
    args = vars(parser.parse_args(argv))
    for key in ("labeler_overrides", "overrides"):
        args[key] = json.loads(args[key])
    return args


def phase_validation(
    phases: Mapping[str, Any],
    subjects: Mapping[str, Subject],
    settings: Mapping[str, Any],
    step: Step,
    report: str | os.PathLike,
    labeler: Subject | None = None,
    molecule_labeler: Callable[[], Any] | None = None,
    symmetric_labeler: Subject | None = None,
) -> dict[str, Any]:
    """Phase energies, point defects and phonons of each phase of one compound.

    For every subject (the labeler as ``"DFT"`` first, where given, then the models): each
    phase relaxed under its symmetry (:func:`pfd_ase.analysis.phases.phase_energies`),
    the ordering against the labeler's and the expected one; with ``settings["defect"]``
    the vacancy formation energy of its element on every symmetry-distinct site of each
    phase's supercell, against μ = ½ E(molecule) of the same subject (the labeler's
    molecule from ``molecule_labeler``, spin-polarised), the lowest per phase; with
    ``settings["phonons"]`` the dispersion of each phase along seekpath's path, one figure
    per phase. The labeler does only ``defect["dft_phases"]`` and
    ``phonons["dft_phases"]``. All results are resumable steps (``phases_<subject>``,
    ``molecule_<subject>``, ``defects_<subject>``, ``phonons_<phase>_<subject>``).

    Parameters
    ----------
    phases
        Phase name → structure (the first is the zero of the relative energies).
    subjects
        Model name (``"base"``, ``"PF"``, ``"PFD"``) → :class:`Subject`; defects and
        phonons for ``settings["models"]`` of them (default: all).
    settings
        ``relax_cell``, ``fmax_eV_A``, ``max_steps``, ``expected_order`` (lowest first),
        ``models``; ``defect``: ``symbol``, ``molecule``, ``multiplicity``,
        ``supercells`` (phase → size of :func:`pfd_ase.materials.supercell`), ``relax``,
        ``fmax_eV_A``, ``max_steps``, ``dft_phases``, ``dft_relax``; ``phonons``:
        ``supercell``, ``npoints``, ``dft_phases``, ``dft_supercell``.
    step, report
        The run's steps (:func:`validation_step`); the report folder (figures).
    labeler, molecule_labeler
        The labeler as a :class:`Subject` and a factory of its molecule set-up
        (:func:`pfd_ase.calculators.labelers.molecule_labeler`); ``None``: models only.
    symmetric_labeler
        The labeler as it computes the phases, which keep their symmetry while relaxing
        (GPAW then reduces its k-points by symmetry); default ``labeler`` (defects and
        phonons break the symmetry: they need a labeler that allows it).

    Returns
    -------
    dict
        ``phase_ordering`` (:func:`pfd_ase.analysis.phases.phase_ordering`), ``phase_energies``
        (subject → phase → energy per formula unit and space groups), ``defects`` (subject →
        ``phases`` → phase → ``E_f_eV``, ``site``, per-site values, ``mu_eV``; and, where
        the labeler's are unrelaxed, ``unrelaxed``: the models' computed its way),
        ``soft_modes`` (subject →
        phase → path point → lowest frequency, THz; negative: imaginary), ``soft_modes_exact``
        (subject → phase → the points the phonon supercell holds exactly; the others are
        Fourier-interpolated) and the figures.
    """
    import numpy as np

    from pfd_ase.analysis.phases import (
        atoms_from_record,
        molecule_chemical_potential,
        phase_energies,
        phase_ordering,
        plot_phase_energies,
        site_vacancies,
    )
    from pfd_ase.analysis.phonons import (
        is_commensurate,
        phonon_bands,
        plot_phonon_bands,
        seekpath_path,
    )
    from pfd_ase.analysis.vacancy import plot_vacancy_bars
    from pfd_ase.materials import supercell

    report = Path(report)
    defect = settings.get("defect")
    if defect and defect.get("dft_phases") and labeler is not None and molecule_labeler is None:
        raise ValueError("the labeler's vacancy energies need molecule_labeler (its molecule)")
    relax = {k: settings[k] for k in ("relax_cell", "fmax_eV_A", "max_steps") if k in settings}
    everyone = {**({"DFT": labeler} if labeler is not None else {}), **subjects}
    names = list(phases)
    computing = dict(everyone)
    if labeler is not None and symmetric_labeler is not None:
        computing["DFT"] = symmetric_labeler
    energies = {
        name: step(
            f"phases_{name}",
            lambda s=s: phase_energies(phases, s.calculator(), **relax),
            {**s.identity, **relax, "phases": names},
        )
        for name, s in computing.items()
    }
    for res in energies.values():  # a stored step comes back with its keys sorted
        res["phases"] = {p: res["phases"][p] for p in names}
        res["relative_meV_fu"] = {p: res["relative_meV_fu"][p] for p in names}
    ordering = phase_ordering(
        energies, settings.get("expected_order"), "DFT" if labeler is not None else None
    )
    compound = str(settings.get("compound", ""))
    plot_phase_energies(ordering, report / "phase_energies.png", f"{compound} phases".strip())
    out: dict[str, Any] = {
        "phase_ordering": ordering,
        "phase_energies": {
            n: {p: {k: v for k, v in r.items() if k != "structure"} for p, r in e["phases"].items()}
            for n, e in energies.items()
        },
    }

    def relaxed(name: str, phase: str) -> Any:
        return atoms_from_record(energies[name]["phases"][phase]["structure"])

    models = [m for m in settings.get("models", list(subjects)) if m in subjects]
    if defect:
        out["defects"] = {}
        for name in [*(["DFT"] if labeler is not None else []), *models]:
            is_dft = name == "DFT"
            chosen = defect.get("dft_phases", []) if is_dft else names
            if not chosen:
                continue
            make = molecule_labeler if is_dft else everyone[name].calculator
            mol = {k: defect[k] for k in ("multiplicity",) if k in defect}
            mu = step(
                f"molecule_{name}",
                lambda make=make: molecule_chemical_potential(
                    make(), defect["molecule"], magmom=float(defect.get("multiplicity", 1) - 1)
                ),
                {**everyone[name].identity, "molecule": defect["molecule"], **mol},
            )
            options = {
                "relax": bool(
                    defect.get("dft_relax", True) if is_dft else defect.get("relax", True)
                ),
                **{k: defect[k] for k in ("fmax_eV_A", "max_steps") if k in defect},
            }
            sizes = {p: defect["supercells"][p] for p in chosen}
            # unrelaxed cells keep their symmetry: the labeler may use it (fewer k-points)
            who = computing[name] if is_dft and not options["relax"] else everyone[name]

            def run(
                sizes: dict = sizes,
                mu: dict = mu,
                options: dict = options,
                who: Subject = who,
                who_name: str = name,
            ) -> dict[str, Any]:
                calc = who.calculator()
                return {
                    p: site_vacancies(
                        supercell(relaxed(who_name, p), size),
                        calc,
                        defect["symbol"],
                        mu["mu_eV"],
                        **options,
                    )
                    for p, size in sizes.items()
                }

            out["defects"][name] = {
                "mu": mu,
                "phases": step(
                    f"defects_{name}",
                    run,
                    {
                        **who.identity,
                        "mu_eV": mu["mu_eV"],
                        "supercells": {p: np.asarray(s).tolist() for p, s in sizes.items()},
                        "structures": {p: energies[name]["phases"][p]["structure"] for p in sizes},
                        **options,
                    },
                ),
            }
            dft_unrelaxed = not defect.get("dft_relax", True) and "DFT" in out["defects"]
            if not is_dft and dft_unrelaxed and options["relax"]:
                # the labeler's way too (unrelaxed, its phases): a like-for-like error
                same = {**options, "relax": False}
                dft_sizes = {p: defect["supercells"][p] for p in defect["dft_phases"]}
                out["defects"][name]["unrelaxed"] = step(
                    f"defects_{name}_unrelaxed",
                    lambda dft_sizes=dft_sizes, mu=mu, same=same: run(dft_sizes, mu, same),
                    {
                        **who.identity,
                        "mu_eV": mu["mu_eV"],
                        "supercells": {p: np.asarray(s).tolist() for p, s in dft_sizes.items()},
                        "structures": {
                            p: energies[name]["phases"][p]["structure"] for p in dft_sizes
                        },
                        **same,
                    },
                )
        bars = {
            n: {p: r["E_f_eV"] for p, r in d["phases"].items()} for n, d in out["defects"].items()
        }
        plot_vacancy_bars(bars, report / "vacancies.png", title=f"{defect['symbol']} vacancy E_f")
    phon = settings.get("phonons")
    if phon:
        out["soft_modes"] = {}
        for phase in names:
            bands = {}
            who = [
                *(["DFT"] if labeler is not None and phase in phon.get("dft_phases", []) else []),
                *models,
            ]
            for name in who:
                primitive, path = seekpath_path(relaxed(name, phase))
                size = (
                    phon.get("dft_supercell", phon["supercell"])
                    if name == "DFT"
                    else phon["supercell"]
                )
                repeats = np.full(3, size) if np.ndim(size) == 0 else np.asarray(size)
                bands[name] = step(
                    f"phonons_{phase}_{name}",
                    lambda name=name, primitive=primitive, path=path, repeats=repeats: phonon_bands(
                        primitive,
                        everyone[name].calculator(),
                        [int(n) for n in repeats],
                        npoints=int(phon.get("npoints", 31)),
                        path=path,
                        mesh=None,
                    ),
                    {
                        **everyone[name].identity,
                        "structure": energies[name]["phases"][phase]["structure"],
                        "supercell": [int(n) for n in repeats],
                        "npoints": int(phon.get("npoints", 31)),
                    },
                )
                out["soft_modes"].setdefault(name, {})[phase] = {
                    lab: float(min(f)) for lab, f in bands[name]["path_points"].items()
                }
                # exact where the supercell holds the point's wave, else Fourier-interpolated
                qs = {lab: q for seg in path for lab, q in seg}
                out.setdefault("soft_modes_exact", {}).setdefault(name, {})[phase] = [
                    lab for lab, q in qs.items() if is_commensurate(bands[name]["supercell"], q)
                ]
            plot_phonon_bands(bands, report / f"phonons_{phase}.png", title=f"{compound} {phase}")
    return out


def quench_validation(
    starts: list[Any],
    subjects: Mapping[str, Subject],
    settings: Mapping[str, Any],
    step: Step,
    report: str | os.PathLike,
    labeler: Subject | None = None,
) -> dict[str, Any]:
    """Amorphous structures made by each subject: melt-quench, sp³ fraction, g(r).

    Each subject melts and quenches every start structure
    (:func:`pfd_ase.analysis.structure.melt_quench`, seeds ``seed + k``); the labeler
    (``"DFT"``) the first ``settings["labeler_starts"]`` of them (0: none). The report gets
    each subject's sp³ fraction and energy per atom, its g(r) averaged over its quenched
    structures (``rdf.png``) and the RMS difference of each model's g(r) from the
    labeler's. Resumable steps ``quench_<subject>``.

    Parameters
    ----------
    starts
        The start structures (e.g. :func:`pfd_ase.materials.amorphous_carbon`).
    subjects
        Model name → :class:`Subject`.
    settings
        ``melt_K``, ``final_K``, ``melt_steps``, ``quench_steps``, ``timestep_fs``,
        ``relax_steps`` (:func:`~pfd_ase.analysis.structure.melt_quench`), ``seed``,
        ``labeler_starts``, ``rmax_A``, ``nbins``, ``cutoff_A`` (the sp³ cutoff),
        ``title``.
    step, report
        The run's steps; the report folder.
    labeler
        The labeler as a :class:`Subject` (``None``: models only).

    Returns
    -------
    dict
        ``quench`` (subject → ``sp3_fraction`` (mean), ``sp3_fractions``, ``energy_eV_atom``,
        ``n_structures``) and ``rdf_rms_vs_dft`` (model → RMS of g(r) − g_DFT(r); absent
        without the labeler's).
    """
    import numpy as np

    from pfd_ase.analysis.phases import atoms_from_record, atoms_record
    from pfd_ase.analysis.structure import (
        CARBON_BOND_CUTOFF_A,
        melt_quench,
        plot_rdf,
        radial_distribution,
        sp3_fraction,
    )

    keys = ("melt_K", "final_K", "melt_steps", "quench_steps", "timestep_fs", "relax_steps")
    md = {k: settings[k] for k in keys if k in settings}
    seed = int(settings.get("seed", 0))
    cutoff = float(settings.get("cutoff_A", CARBON_BOND_CUTOFF_A))
    n_dft = int(settings.get("labeler_starts", 0))
    everyone = {**({"DFT": labeler} if labeler is not None and n_dft else {}), **subjects}
    out: dict[str, Any] = {"quench": {}}
    curves: dict[str, tuple[Any, Any]] = {}
    for name, subject in everyone.items():
        chosen = starts[:n_dft] if name == "DFT" else list(starts)

        def run(subject: Subject = subject, chosen: list = chosen) -> dict[str, Any]:
            calc = subject.calculator()
            made = {}
            for k, start in enumerate(chosen):
                quenched, info = melt_quench(start, calc, seed=seed + k, **md)
                made[str(k)] = {
                    **info,
                    "sp3_fraction": sp3_fraction(quenched, cutoff),
                    "structure": atoms_record(quenched),
                }
            return made

        record = step(
            f"quench_{name}",
            run,
            {
                **subject.identity,
                **md,
                "seed": seed,
                "cutoff_A": cutoff,
                "starts": [atoms_record(a) for a in chosen],
            },
        )
        made = [record[str(k)] for k in range(len(chosen))]
        frames = [atoms_from_record(m["structure"]) for m in made]
        r, g = radial_distribution(
            frames, float(settings.get("rmax_A", 5.0)), int(settings.get("nbins", 100))
        )
        curves[name] = (r, g)
        fractions = [m["sp3_fraction"] for m in made]
        out["quench"][name] = {
            "sp3_fraction": float(np.mean(fractions)),
            "sp3_fractions": fractions,
            "energy_eV_atom": [m["energy_eV_atom"] for m in made],
            "n_structures": len(made),
        }
    if "DFT" in curves:
        g_dft = np.asarray(curves["DFT"][1])
        out["rdf_rms_vs_dft"] = {
            n: float(np.sqrt(np.mean((np.asarray(g) - g_dft) ** 2)))
            for n, (_, g) in curves.items()
            if n != "DFT"
        }
    if curves:
        plot_rdf(curves, Path(report) / "rdf.png", settings.get("title"))
    return out
