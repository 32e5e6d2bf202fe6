"""The PFD loops: initial data, the fine-tune loop (teacher) and the distillation loop (student).

Each loop is a short sequence of the named steps of :mod:`pfd_ase.workflow.steps`, each
recorded by :class:`RecordedSteps` with :meth:`RunState.run_step` under the inputs it depends
on (its settings, seeds and the identities of the models and frames it consumes), so that a
rerun with changed settings redoes exactly the recorded steps that depend on them:

=======================  ===================  =============================================
recorded step            named steps          inputs
=======================  ===================  =============================================
``init.label``           perturb, label       ``init``, seed, structures, labeler
``init.train``           train                ``finetune`` training, base model, dataset
``ft.<s>.NNN.md``        explore, filter      the stage's MD and filter, structures, model;
                                              with ``dh_watch``: it and the dataset
``ft.<s>.NNN.select``    select               ``n_select``, ``chunk_size``, candidates,
                                              dataset
``ft.<s>.NNN.label``     label, evaluate      selected frames, labeler, model, dataset
``ft.<s>.NNN.train``     train                ``finetune`` training, base model, dataset
``distill.perturb``      perturb, label       ``distill.perturb``, seed, structures, teacher
``distill.NNN.md``       explore, filter      ``distill.explore``, structures, teacher (the
                                              student from iteration 1 with ``driver:
                                              student``)
``distill.NNN.explore``  evaluate, select,    candidates, teacher, student, ``n_frames``,
                         label                threshold, training set
``distill.NNN.train``    train                ``distill`` training, training set
``validation``           evaluate             teacher, student, dataset
=======================  ===================  =============================================

The dataset (``data/labelled.extxyz``) is the merge of this run's labelling outputs, in run
order: a labelling step that is redone replaces its frames.

A frame the labeler fails on (an SCF that does not converge, a crashed program, a task past
``labeler.timeout_s``) is recorded with its cause (``failure.json`` in its task folder, and
``failures`` with ``n_failed`` in the step's record) and left out; the loop goes on with the
frames that were labelled. A rerun reuses such a step as it is; ``run(config,
retry_failed=True)`` (``pfd-ase run --retry-failed``) runs the labelling steps with failures
again: only their failed tasks are computed, and the steps that depend on the dataset are
redone through their inputs when frames were added.

Run directory layout (``config["workdir"]``)::

    structures/<name>.extxyz       structures given as ase.Atoms (Python API)
    data/labelled.extxyz           every DFT-labelled frame of this run (after each labelling)
    init/label/                    labelling of the perturbed structures (task.*, labelled.extxyz)
    finetune/init/                 first fine-tune of the base model
    finetune/<stage>/iter.NNN/     explore/ (MD walkers), candidates.extxyz, selected.extxyz,
                                   label/, train/
    distill/perturb/               teacher labels of the perturbed copies (distill.perturb)
    distill/iter.NNN/              explore/, candidates.extxyz, label/ (teacher labels), train/
    distill/teacher_labelled.extxyz
    state/<step>.json              completion records with the inputs that produced them
    state/started/<step>.json      inputs of a step that started and has not finished
    summary.json                   config, seeds, versions, per-step records (run order), paths
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from ase import Atoms

from pfd_ase.data import (
    FRAME_ID_KEY,
    STRUCTURE_KEY,
    frame_fingerprint,
    merge_frames,
    read_frames,
    write_frames,
)
from pfd_ase.structures import repeated_to
from pfd_ase.workflow import steps
from pfd_ase.workflow.config import (
    DistillConfig,
    StageConfig,
    TrainConfig,
    distill_config,
    finetune_stages,
    init_config,
    structure_atoms,
    student_training,
    teacher_training,
)
from pfd_ase.workflow.state import (
    RunState,
    frames_identity,
    labelling_failures,
    merge_into,
    model_identity,
)

__all__ = [
    "CANDIDATES_FILE",
    "SELECTED_FILE",
    "RecordedSteps",
    "distill_loop",
    "finetune_loop",
    "initial_data",
    "labeler_identity",
    "run",
    "write_structures",
]

#: Explored frames that passed the filter, in an iteration's folder.
CANDIDATES_FILE = "candidates.extxyz"
#: Frames selected for labelling, in a fine-tune iteration's folder.
SELECTED_FILE = "selected.extxyz"


# --------------------------------------------------------------------------- helpers
def labeler_identity(labeler: Any) -> dict[str, Any]:
    """What identifies the labeler of a configuration (name and settings)."""
    if isinstance(labeler, Mapping):
        return {"name": labeler["name"], "overrides": dict(labeler.get("overrides") or {})}
    from pfd_ase.calculators.labelers import labeler_info

    return labeler_info(labeler)


def _labeler(config: Mapping[str, Any]) -> Any:
    labeler = config["labeler"]
    if isinstance(labeler, Mapping):
        return labeler["name"], dict(labeler.get("overrides") or {})
    return labeler  # a calculator object (Python API)


def _labeler_timeout_s(config: Mapping[str, Any]) -> float | None:
    """``labeler.timeout_s`` (None for a calculator object given from Python)."""
    labeler = config["labeler"]
    timeout = labeler.get("timeout_s") if isinstance(labeler, Mapping) else None
    return None if timeout is None else float(timeout)


def _structures(config: Mapping[str, Any], names: Sequence[str] | None) -> dict[str, Atoms]:
    names = list(names or config["structures"])
    return {name: structure_atoms(config["structures"][name]) for name in names}


def _structure_ids(structures: Mapping[str, Atoms]) -> list[list[str]]:
    return [[name, frame_fingerprint(atoms)] for name, atoms in structures.items()]


def _failures(result: Any) -> list[dict[str, Any]]:
    keys = ("index", "frame_id", "kind", "exception", "message", "task_dir")
    return [{k: f.get(k) for k in keys} for f in result.failures]


def _recover(source: Path, merged: Path, prefix: str) -> None:
    """A labelling step recorded by an older version has no ``labelled.extxyz`` of its own:
    take its frames (ids starting with ``prefix``) from the merged file."""
    if not source.exists() and merged.exists():
        frames = [
            a for a in read_frames(merged) if str(a.info.get(FRAME_ID_KEY, "")).startswith(prefix)
        ]
        write_frames(source, frames)


def _dataset_entropy(frames: Sequence[Atoms]) -> float | None:
    from pfd_ase.selectors import quests

    if not frames:
        return None
    return float(quests.entropy(quests.descriptors(list(frames))))


def _filter_counts(*counts: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for kind, n in c.items():
            out[kind] = out.get(kind, 0) + int(n)
    return out


# --------------------------------------------------------------------------- recorded steps
def initial_data(
    config: Mapping[str, Any],
    state: RunState,
    executor: Executor | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Perturb the initial structures (seeded) and label them (PFD stage "init").

    Writes ``init/label/labelled.extxyz`` and makes it the dataset; returns the record.
    ``timeout_s``: the labelling tasks' time limit (default: ``labeler.timeout_s``).
    """
    init = init_config(config)
    frames = steps.perturb(init, _structures(config, init.structures), config["seed"])
    folder = state.workdir / "init" / "label"
    if timeout_s is None:
        timeout_s = _labeler_timeout_s(config)
    result = steps.label(frames, _labeler(config), folder, executor=executor, timeout_s=timeout_s)
    size = state.set_dataset([folder / steps.LABELLED_FILE])
    return {
        "n_frames": len(frames),
        "n_labelled": len(result.frames),
        "n_failed": len(result.failures),
        "failures": _failures(result),
        "dataset_size": size,
    }


def _md(
    stage: StageConfig | DistillConfig,
    structures: dict[str, Atoms],
    model: str,
    iteration: int,
    folder: Path,
    executor: Executor | None,
    progress: bool,
    dataset: list[Atoms] | None = None,
) -> dict[str, Any]:
    """Steps explore and filter: ``folder/candidates.extxyz``.

    A stage with a ``dh_watch`` watches the walkers' dH against ``dataset``; only the frames
    beyond its ``max_dH`` are candidates.
    """
    atoms = list(structures.values())
    watch = None
    if isinstance(stage, StageConfig) and stage.dh_watch is not None:
        from pfd_ase.explore import DHWatch
        from pfd_ase.selectors import DescriptorBank

        bank = DescriptorBank.from_frames(dataset or [], source="dataset")
        watch = DHWatch(bank, **stage.dh_watch)
    result = steps.explore(
        stage,
        atoms,
        model,
        folder / "explore",
        iteration=iteration,
        executor=executor,
        progress=progress,
        dh_watch=watch,
    )
    filtered = steps.filter(result.frames, stage, atoms)
    kept = filtered.kept
    names = list(structures)
    for frame in kept:
        frame.info[STRUCTURE_KEY] = names[int(frame.info["pfd_structure_index"])]
    record: dict[str, Any] = {"n_explored": len(result.frames)}
    if watch is not None:
        kept = [a for a in kept if a.info.get("pfd_dH_exceeded")]
        record["n_filtered"] = len(filtered.kept)
        record["n_over_max_dH"] = len(kept)
        record["walkers_stopped_by_dH"] = len(result.stopped)
    write_frames(folder / CANDIDATES_FILE, [steps.bare(a) for a in kept])
    return {
        **record,
        "n_candidates": len(kept),
        "walkers_exploded": len(result.exploded),
        "walkers_failed": len(result.failed),
        "filter_counts": _filter_counts(result.filter_counts, filtered.counts),
    }


def _select(stage: StageConfig, folder: Path, key: str, dataset: list[Atoms]) -> dict[str, Any]:
    """Step select (entropy): ``folder/selected.extxyz`` with frame ids ``<key>.NNN``."""
    candidates = read_frames(folder / CANDIDATES_FILE, missing_ok=True)
    picked = steps.select(candidates, stage, reference=dataset)
    selected = []
    for j, i in enumerate(picked):
        atoms = candidates[i]
        atoms.info[FRAME_ID_KEY] = f"{key}.{j:03d}"
        selected.append(atoms)
    write_frames(folder / SELECTED_FILE, selected)
    return {
        "n_candidates": len(candidates),
        "n_selected": len(selected),
        "selected_indices": picked,
    }


def _label_and_test(
    labeler: Any,
    folder: Path,
    model: str,
    dataset: list[Atoms],
    executor: Executor | None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Steps label and evaluate: the current model on frames it has never seen."""
    selected = read_frames(folder / SELECTED_FILE, missing_ok=True)
    result = steps.label(
        selected, labeler, folder / "label", executor=executor, timeout_s=timeout_s
    )
    merged = merge_frames(dataset, result.frames)
    test = steps.evaluate(model, result.frames)
    return {
        "n_labelled": len(result.frames),
        "n_failed": len(result.failures),
        "failures": _failures(result),
        "dataset_size": len(merged),
        # the convergence test: the current model on frames it has never seen
        "model_force_rmse_eV_A": test.force_rmse_eV_A,
        "dataset_entropy": _dataset_entropy(merged),
    }


def _train(
    training: TrainConfig, frames: list[Atoms], folder: Path, progress: bool
) -> dict[str, Any]:
    """Step train."""
    out = steps.train(training, frames, folder, progress=progress)
    record: dict[str, Any] = {"model": out.model}
    if training.role == "student":
        record.update(compressed=out.compressed, info=out.info, checkpoint=out.checkpoint)
    return record


def _compare_select_label(
    ds: DistillConfig,
    folder: Path,
    key: str,
    teacher: str,
    student: str | None,
    train_set: list[Atoms],
    executor: Executor | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Steps evaluate (student against teacher), select (deviation) and label (teacher)."""
    candidates = read_frames(folder / CANDIDATES_FILE, missing_ok=True)
    test = steps.evaluate(student, candidates, reference=teacher) if student else None
    picked = steps.select(candidates, ds, deviations=test.max_force_devi_eV_A if test else None)
    new = []
    for j, i in enumerate(picked):
        candidates[i].info[FRAME_ID_KEY] = f"{key}.{j:03d}"
        new.append(candidates[i])
    labelled, record = _teacher_label(new, teacher, folder / "label", executor, timeout_s)
    return {
        "n_candidates": len(candidates),
        "n_selected": len(new),
        "selected_indices": picked,
        **record,
        "train_size": len(merge_frames(train_set, labelled)),
        "student_vs_teacher_force_rmse_eV_A": test.force_rmse_eV_A if test else None,
    }


def _teacher_perturbed(
    ds: DistillConfig,
    structures: Mapping[str, Atoms],
    teacher: str,
    folder: Path,
    executor: Executor | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Steps perturb and label (teacher): ``ds.perturb`` copies of ``structures``."""
    assert ds.perturb is not None
    frames = steps.perturb(ds.perturb, structures, ds.perturb_seed, prefix="distill.perturb")
    _, record = _teacher_label(frames, teacher, folder, executor, timeout_s)
    return {"n_frames": len(frames), **record}


def _teacher_label(
    frames: list[Atoms],
    teacher: str,
    folder: Path,
    executor: Executor | None,
    timeout_s: float | None,
) -> tuple[list[Atoms], dict[str, Any]]:
    """Step label with the teacher as labeler; the labelled frames and the step's counts.

    The teacher labels like any labeler: a ``("pfd", {"model": teacher})`` labeler spec, one
    task per frame through the run's executor, resumable frame by frame. Labels under another
    task key (a version that labelled with a calculator object) are cheap to redo, so they
    are kept aside as ``label.replaced`` and labelled again.
    """
    result = steps.label(
        frames,
        ("pfd", {"model": teacher}),
        folder,
        executor=executor,
        timeout_s=timeout_s,
        replace_mismatched=True,
    )
    record = {
        "n_new": len(result.frames),
        "n_failed": len(result.failures),
        "failures": _failures(result),
    }
    return result.frames, record


def _within_dataset(md: Mapping[str, Any]) -> bool:
    """Whether a watched MD step's walkers all ran and none went beyond ``max_dH``."""
    ran = md["n_explored"] > 0 and not md["walkers_failed"] and not md["walkers_exploded"]
    return md.get("n_over_max_dH") == 0 and ran


# --------------------------------------------------------------------------- recording
class RecordedSteps:
    """The steps of one run, each recorded under the inputs it depends on.

    Every method runs one recorded step through :meth:`RunState.run_step` (or reuses its
    record) and returns the record; the labelling steps also keep the dataset
    (``data/labelled.extxyz``) and the student's training set
    (``distill/teacher_labelled.extxyz``) the merge of this run's labelling outputs.

    Parameters
    ----------
    config
        The loaded configuration.
    state
        The run directory.
    executor
        Where labelling and MD tasks run (``None``: here, serially).
    retry_failed
        Run the labelling steps whose record holds failed tasks again (their finished
        tasks are reused); otherwise such a record is reused as it is.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        state: RunState,
        executor: Executor | None = None,
        *,
        retry_failed: bool = False,
    ) -> None:
        self.config, self.state, self.executor = config, state, executor
        self.retry_failed = retry_failed
        self.progress = bool(config["progress"])
        self.labeler = _labeler(config)
        self.timeout_s = _labeler_timeout_s(config)
        self.labeler_id = labeler_identity(config["labeler"])
        self.sources: list[Path] = []  # labelled-frame files of this run (the dataset)
        self.teacher_sources: list[Path] = []  # teacher-labelled files (the student's data)
        self.train_path = state.workdir / "distill" / "teacher_labelled.extxyz"

    def init_label(self) -> dict[str, Any]:
        """``init.label``: perturb and label the initial structures."""
        state, config = self.state, self.config
        init = init_config(config)
        folder = state.workdir / "init" / "label"
        record = state.run_step(
            "init.label",
            partial(initial_data, config, state, self.executor, self.timeout_s),
            inputs={
                "init": asdict(init),
                "seed": config["seed"],
                "structures": _structure_ids(_structures(config, init.structures)),
                "labeler": self.labeler_id,
            },
            outputs=[folder],
            rerun=self._retry("init.label"),
        )
        self._add_labelled(folder / steps.LABELLED_FILE, "init.")
        return record

    def train(self, key: str, training: TrainConfig, folder: Path) -> dict[str, Any]:
        """Train the teacher on the dataset, or the student on the teacher-labelled set."""
        if training.role == "teacher":
            frames = self.state.dataset()
        else:
            frames = read_frames(self.train_path, missing_ok=True)
        settings = asdict(training)
        # the settings added later are absent when unset: run folders from before them match;
        # what init_from_previous does is in init_model (the previous student, by content)
        del settings["init_from_previous"]
        for name in ("sel", "init_model", "stress_weight", "loss", "structure_weights"):
            if settings[name] is None:
                del settings[name]
        if training.init_model is not None:
            settings["init_model"] = model_identity(training.init_model)
        inputs: dict[str, Any] = {"training": settings, "data": frames_identity(frames)}
        if training.base_model is not None:
            inputs["base_model"] = model_identity(training.base_model, training.head)
        return self.state.run_step(
            key,
            partial(_train, training, frames, folder, self.progress),
            inputs=inputs,
            outputs=[folder],
        )

    def md(
        self,
        key: str,
        stage: StageConfig | DistillConfig,
        structures: dict[str, Atoms],
        model: str,
        iteration: int,
        folder: Path,
    ) -> dict[str, Any]:
        """Explore with ``model`` and filter: ``folder/candidates.extxyz``."""
        inputs: dict[str, Any] = {
            "explore": asdict(stage.explore),
            "iteration": iteration,
            "structures": _structure_ids(structures),
            "model": model_identity(model),
        }
        dataset = None
        if isinstance(stage, StageConfig) and stage.dh_watch is not None:
            dataset = self.state.dataset()  # the watch's bank (absent: old run folders match)
            inputs["dh_watch"] = {**stage.dh_watch, "bank": frames_identity(dataset)}
        return self.state.run_step(
            key,
            partial(
                _md,
                stage,
                structures,
                model,
                iteration,
                folder,
                self.executor,
                self.progress,
                dataset,
            ),
            inputs=inputs,
            outputs=[folder / "explore", folder / CANDIDATES_FILE],
        )

    def select(self, key: str, stage: StageConfig, folder: Path, prefix: str) -> dict[str, Any]:
        """Entropy selection against the dataset: ``folder/selected.extxyz``."""
        data = self.state.dataset()
        return self.state.run_step(
            key,
            partial(_select, stage, folder, prefix, data),
            inputs={
                "n_select": stage.n_select,
                "chunk_size": stage.chunk_size,
                "candidates": _file_identity(folder / CANDIDATES_FILE),
                "data": frames_identity(data),
            },
            outputs=[folder / SELECTED_FILE],
        )

    def label(self, key: str, folder: Path, model: str, prefix: str) -> dict[str, Any]:
        """Label the selected frames and test ``model`` on them; add them to the dataset."""
        data = self.state.dataset()
        record = self.state.run_step(
            key,
            partial(
                _label_and_test, self.labeler, folder, model, data, self.executor, self.timeout_s
            ),
            inputs={
                "selected": _file_identity(folder / SELECTED_FILE),
                "labeler": self.labeler_id,
                "model": model_identity(model),
                "data": frames_identity(data),
            },
            outputs=[folder / "label"],
            rerun=self._retry(key),
        )
        self._add_labelled(folder / "label" / steps.LABELLED_FILE, f"{prefix}.")
        return record

    def compare(
        self,
        key: str,
        ds: DistillConfig,
        folder: Path,
        teacher: str,
        student: str | None,
        prefix: str,
    ) -> dict[str, Any]:
        """Student against teacher on the candidates, select, label with the teacher; add
        the new frames to the student's training set."""
        train_set = read_frames(self.train_path, missing_ok=True) if self.teacher_sources else []
        record = self.state.run_step(
            key,
            partial(
                _compare_select_label,
                ds,
                folder,
                prefix,
                teacher,
                student,
                train_set,
                self.executor,
                self.timeout_s,
            ),
            inputs={
                "candidates": _file_identity(folder / CANDIDATES_FILE),
                "teacher": model_identity(teacher),
                "student": model_identity(student) if student else None,
                "n_frames": ds.n_frames,
                "force_devi_threshold_eV_A": ds.force_devi_threshold_eV_A,
                "train_set": frames_identity(train_set),
            },
            outputs=[folder / "label"],
            rerun=self._retry(key),
        )
        self._add_teacher_labelled(folder / "label" / steps.LABELLED_FILE, f"{prefix}.")
        return record

    def perturb(
        self, ds: DistillConfig, structures: Mapping[str, Atoms], teacher: str
    ) -> dict[str, Any]:
        """``distill.perturb``: the teacher labels perturbed copies of ``structures``; they
        join the student's training set."""
        folder = self.state.workdir / "distill" / "perturb"
        record = self.state.run_step(
            "distill.perturb",
            partial(
                _teacher_perturbed, ds, structures, teacher, folder, self.executor, self.timeout_s
            ),
            inputs={
                "perturb": asdict(ds.perturb),
                "seed": ds.perturb_seed,
                "structures": _structure_ids(structures),
                "teacher": model_identity(teacher),
            },
            outputs=[folder],
            rerun=self._retry("distill.perturb"),
        )
        self._add_teacher_labelled(folder / steps.LABELLED_FILE, "distill.perturb.")
        return record

    def _retry(self, key: str) -> bool:
        """Whether to run labelling step ``key`` again: asked to, and it has failed tasks."""
        if not self.retry_failed:
            return False
        record = self.state.done(key)
        return bool(record and record.get("n_failed"))

    def _add_labelled(self, source: Path, prefix: str) -> None:
        _recover(source, self.state.dataset_path, prefix)
        self.sources.append(source)
        self.state.set_dataset(self.sources)

    def _add_teacher_labelled(self, source: Path, prefix: str) -> None:
        _recover(source, self.train_path, prefix)
        self.teacher_sources.append(source)
        merge_into(self.train_path, self.teacher_sources)


def _file_identity(path: Path) -> str:
    return frames_identity(read_frames(path, missing_ok=True))


# --------------------------------------------------------------------------- loops
def finetune_loop(
    config: Mapping[str, Any],
    state: RunState,
    executor: Executor | None = None,
    recorder: RecordedSteps | None = None,
) -> str:
    """Fine-tune loop over the configured stages; return the final teacher model path."""
    run = recorder or RecordedSteps(config, state, executor)
    init = run.init_label()
    if not state.dataset():
        causes = labelling_failures({"init.label": init}).get("init.label", {}).get("causes")
        raise RuntimeError(
            f"no initial frame could be labelled (failures by cause: {causes}); see "
            "state/init.label.json and the failure.json of each task in init/label; once the "
            "labeler is fixed, rerun with --retry-failed (retry_failed=True)"
        )
    training = teacher_training(config)
    model = run.train("init.train", training, state.workdir / "finetune" / "init")["model"]
    state.save_summary(teacher=model)
    threshold = config["finetune"]["force_rmse_threshold_eV_A"]
    for stage in finetune_stages(config):
        structures = _structures(config, stage.structures)
        for it in range(stage.max_iterations):
            key = f"ft.{stage.name}.{it:03d}"
            folder = state.workdir / "finetune" / stage.name / f"iter.{it:03d}"
            md = run.md(f"{key}.md", stage, structures, model, it, folder)
            if _within_dataset(md):
                state.save_summary(**{f"converged.{stage.name}": it})
                break
            sel = run.select(f"{key}.select", stage, folder, key)
            lab = run.label(f"{key}.label", folder, model, key)
            err = lab["model_force_rmse_eV_A"]
            if err is not None and err < threshold:
                state.save_summary(**{f"converged.{stage.name}": it})
                break
            if sel["n_selected"] == 0 or lab["n_labelled"] == 0:
                continue  # nothing new to learn from; explore again with another seed
            model = run.train(f"{key}.train", training, folder / "train")["model"]
            state.save_summary(teacher=model)
    return model


def distill_loop(
    config: Mapping[str, Any],
    state: RunState,
    teacher: str,
    executor: Executor | None = None,
    recorder: RecordedSteps | None = None,
) -> str | None:
    """Distil ``teacher`` into a small student; return the student model path."""
    ds = distill_config(config)
    if not ds.enabled:
        return None
    run = recorder or RecordedSteps(config, state, executor)
    training = student_training(config)
    structures = {
        name: repeated_to(atoms, ds.min_atoms)
        for name, atoms in _structures(config, ds.structures).items()
    }
    if ds.perturb is not None:
        run.perturb(ds, structures, teacher)
    student: str | None = None
    tr: dict[str, Any] | None = None  # the previous iteration's training record
    previous: float | None = None
    for it in range(ds.max_iterations):
        key = f"distill.{it:03d}"
        folder = state.workdir / "distill" / f"iter.{it:03d}"
        if ds.student_explore is not None and student is not None:
            # the current student explores (the first iteration, with none yet: the teacher)
            md = dataclasses.replace(ds, explore=ds.student_explore)
            run.md(f"{key}.md", md, structures, student, it, folder)
        else:
            run.md(f"{key}.md", ds, structures, teacher, it, folder)
        rec = run.compare(f"{key}.explore", ds, folder, teacher, student, key)
        err = rec["student_vs_teacher_force_rmse_eV_A"]
        if err is not None:
            if err < ds.target_force_rmse_eV_A:
                state.save_summary(distill_converged=it)
                break
            if previous is not None and (previous - err) < ds.min_improvement * previous:
                state.save_summary(distill_stalled=it)
                break
            previous = err
        if student is not None and rec["n_new"] == 0:
            break
        init = tr.get("checkpoint") if training.init_from_previous and tr else None
        tr = run.train(
            f"{key}.train", dataclasses.replace(training, init_model=init), folder / "train"
        )
        student = tr["compressed"] or tr["model"]
        state.save_summary(student=student)
    return student


# --------------------------------------------------------------------------- driver
def write_structures(config: Mapping[str, Any], workdir: str | Path) -> dict[str, Any]:
    """``config`` with each ``ase.Atoms`` structure written to ``workdir/structures/<name>.extxyz``
    (rewritten only when it changed) and replaced by ``{"file": path}``."""
    out = dict(config)
    specs = {}
    for name, spec in config["structures"].items():
        if isinstance(spec, Atoms):
            path = Path(workdir).resolve() / "structures" / f"{name}.extxyz"
            atoms = structure_atoms(spec)
            old = read_frames(path, missing_ok=True)
            if len(old) != 1 or frame_fingerprint(old[0]) != frame_fingerprint(atoms):
                write_frames(path, [atoms])
            spec = {"file": str(path)}
        specs[name] = spec
    out["structures"] = specs
    return out


def _validation(teacher: str, student: str | None, data: list[Atoms]) -> dict[str, Any]:
    """Step evaluate: the teacher and the student on every DFT frame."""
    validation: dict[str, Any] = {
        "n_frames": len(data),
        "teacher_force_rmse_eV_A": steps.evaluate(teacher, data).force_rmse_eV_A,
    }
    if student:
        validation["student_force_rmse_eV_A"] = steps.evaluate(student, data).force_rmse_eV_A
    return validation


#: Summary keys that record how the loops ended.
_OUTCOMES = ("converged.", "distill_converged", "distill_stalled", "validation")


def run(config: Mapping[str, Any] | str | Path, *, retry_failed: bool = False) -> dict[str, Any]:
    """Run (or resume) a whole PFD workflow; return the run summary.

    A rerun with changed settings redoes exactly the steps that depend on them (and says
    which, through the ``pfd_ase.workflow`` logger); the summary lists the steps of this
    run in run order, each with the inputs that produced it.

    Frames the labeler failed on are recorded with their cause and left out (see the
    module docstring); a rerun reuses those steps unless ``retry_failed``: then every
    labelling step with failed tasks runs again, computing only those tasks, and what
    depends on the new frames is redone.

    The run holds the lock of its ``workdir`` (:func:`pfd_ase.workflow.lock.run_lock`):
    while another run works there, this one raises
    :class:`~pfd_ase.workflow.lock.RunLockedError` before any work.
    """
    from pfd_ase.workflow.config import load_config
    from pfd_ase.workflow.lock import run_lock

    config = load_config(config)
    with run_lock(config["workdir"]):
        return _run_locked(config, retry_failed)


def _run_locked(config: dict[str, Any], retry_failed: bool = False) -> dict[str, Any]:
    """The body of :func:`run`, under the run directory's lock."""
    from pfd_ase.parallel import make_executor

    config = write_structures(config, config["workdir"])
    state = RunState(config["workdir"], config)
    for key in [k for k in state.summary if k.startswith(_OUTCOMES)]:
        del state.summary[key]  # the outcome of a previous run, maybe of other settings
    state.save_summary(finished=False)
    with make_executor(config["executor"]) as executor:
        recorder = RecordedSteps(config, state, executor, retry_failed=retry_failed)
        teacher = finetune_loop(config, state, recorder=recorder)
        student = distill_loop(config, state, teacher, recorder=recorder)
    data = state.dataset()
    validation = state.run_step(
        "validation",
        partial(_validation, teacher, student, data),
        inputs={
            "teacher": model_identity(teacher),
            "student": model_identity(student) if student else None,
            "data": frames_identity(data),
        },
    )
    keys = ("n_frames", "teacher_force_rmse_eV_A", "student_force_rmse_eV_A")
    validation = {k: validation[k] for k in keys if k in validation}
    state.keep_visited_steps()
    state.save_summary(teacher=teacher, student=student, validation=validation, finished=True)
    return state.summary
