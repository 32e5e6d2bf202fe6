"""The named steps of the PFD loops: perturb, explore, filter, select, label, evaluate, train.

Each step is a plain function of its typed settings (:mod:`pfd_ase.workflow.config`) and
its inputs, and writes only into the folder it is given; the loops
(:mod:`pfd_ase.workflow.loops`) chain them and record each with
:meth:`~pfd_ase.workflow.state.RunState.run_step`, keyed by the identities of
:func:`~pfd_ase.workflow.state.frames_identity` and
:func:`~pfd_ase.workflow.state.model_identity`.

=========  ===================================================================
perturb    seeded perturbed copies of the starting structures (initial data)
explore    MD walkers driven by a model (:func:`pfd_ase.explore.explore`)
filter     the stage's frame filter on explored frames
select     entropy selection (fine-tune stage) or student-teacher deviation
           (distillation)
label      the labeler on frames, one task folder each (:func:`pfd_ase.label.label_frames`)
evaluate   a model's errors on labelled frames or against a reference model
train      fine-tune the base model (teacher) or train the student
=========  ===================================================================
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from pfd_ase.calculators.deviation import force_deviation
from pfd_ase.data import FRAME_ID_KEY, STRUCTURE_KEY, write_frames
from pfd_ase.explore import DHWatch, ExploreResult
from pfd_ase.label import LabelResult
from pfd_ase.selectors.filters import FilterResult, filter_frames
from pfd_ase.workflow.config import DistillConfig, InitConfig, StageConfig, TrainConfig

__all__ = [
    "LABELLED_FILE",
    "Evaluation",
    "TrainOutput",
    "bare",
    "evaluate",
    "explore",
    "filter",
    "label",
    "perturb",
    "select",
    "train",
]

#: The frames a labelling step labelled, in its folder (beside the task folders).
LABELLED_FILE = "labelled.extxyz"

ExploreStage = StageConfig | DistillConfig


# --------------------------------------------------------------------------- helpers
def bare(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` without its calculator (``info`` and ``arrays`` kept)."""
    new = atoms.copy()
    new.calc = None
    return new


# --------------------------------------------------------------------------- steps
def perturb(
    init: InitConfig, structures: Mapping[str, Atoms], seed: int, prefix: str = "init"
) -> list[Atoms]:
    """Perturbed copies of ``structures`` (in order), ``init.n_perturb`` each.

    One ``np.random.default_rng(seed)`` stream for all; frame ids ``<prefix>.<name>.NNN``,
    ``info["pfd_structure"]`` the structure's name.
    """
    from pfd_ase.structures import perturb as perturb_structure

    rng = np.random.default_rng(seed)
    frames = []
    for name, atoms in structures.items():
        copies = perturb_structure(
            atoms, init.n_perturb, rng, init.cell_strain, init.displacement_A
        )
        for k, new in enumerate(copies):
            new.info[FRAME_ID_KEY] = f"{prefix}.{name}.{k:03d}"
            new.info[STRUCTURE_KEY] = name
            frames.append(new)
    return frames


def explore(
    stage: ExploreStage,
    structures: Sequence[Atoms],
    model: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    iteration: int = 0,
    executor: Executor | None = None,
    progress: bool = True,
    dh_watch: DHWatch | None = None,
) -> ExploreResult:
    """MD walkers driven by ``model`` from ``structures`` with the stage's MD settings.

    Parameters
    ----------
    stage
        A fine-tune stage or the distillation settings: ``stage.explore`` (an
        :class:`~pfd_ase.explore.ExploreTask`) holds the MD settings and the frame filter.
    structures
        Starting structures.
    model
        Model file (or pre-trained name) for :class:`~pfd_ase.calculators.PFDCalculator`.
    folder
        The walkers' folder.
    iteration
        Iteration of the stage: the walkers' seed is ``stage.explore.seed + iteration``.
    executor, progress, dh_watch
        See :func:`pfd_ase.explore.explore`.
    """
    from pfd_ase.explore import explore as run_explore

    task = dataclasses.replace(stage.explore, seed=stage.explore.seed + iteration)
    return run_explore(
        list(structures),
        ("pfd", {"model": str(model)}),
        folder,
        task,
        executor=executor,
        progress=progress,
        dh_watch=dh_watch,
    )


def filter(  # noqa: A001 - the step's name
    frames: Sequence[Atoms], stage: ExploreStage, structures: Sequence[Atoms] | None = None
) -> FilterResult:
    """The stage's frame filter (``stage.explore.frame_filter``) on explored frames.

    Cell limits are relative to each frame's starting structure
    (``atoms.info["pfd_structure_index"]`` into ``structures``), absolute without it.
    The walkers of :func:`explore` already reject what this filter rejects while they
    run; this step applies the same limits to frames from anywhere.
    """
    refs: list[Any] = []
    for atoms in frames:
        index = atoms.info.get("pfd_structure_index")
        ok = structures is not None and isinstance(index, int | np.integer)
        refs.append(structures[int(index)].cell.array if ok else None)
    return filter_frames(list(frames), refs, stage.explore.frame_filter)


def select(
    candidates: Sequence[Atoms],
    stage: ExploreStage,
    *,
    reference: Sequence[Atoms] = (),
    deviations: Sequence[float] | None = None,
) -> list[int]:
    """Indices of the candidates to label.

    Parameters
    ----------
    candidates
        Frames to choose from.
    stage
        A :class:`StageConfig`: the ``n_select`` frames of highest entropy gain relative
        to ``reference`` (and to the frames chosen before them), ``chunk_size`` at a
        time, in selection order. A :class:`DistillConfig`: with ``deviations`` (each
        candidate's largest atomic student-teacher force deviation, eV/Å) the
        ``n_frames`` most deviating beyond ``force_devi_threshold_eV_A``, in candidate
        order; without (no student yet) ``n_frames`` evenly spaced candidates.
    reference
        Labelled frames already in the data set (entropy selection).
    deviations
        Per candidate deviations (distillation).
    """
    candidates = list(candidates)
    if isinstance(stage, StageConfig):
        from pfd_ase.selectors import EntropySelector

        n = min(stage.n_select, len(candidates))
        if not n:
            return []
        selector = EntropySelector(n_target=n, chunk_size=stage.chunk_size)
        return [int(i) for i in selector.select(candidates, list(reference))]
    if deviations is None:
        if not candidates:
            return []
        spaced = np.linspace(0, len(candidates) - 1, min(stage.n_frames, len(candidates)))
        return sorted({int(round(x)) for x in spaced})
    devi = np.asarray(deviations, dtype=float)
    if len(devi) != len(candidates):
        raise ValueError(f"{len(devi)} deviations for {len(candidates)} candidates")
    over = [int(i) for i in np.argsort(devi)[::-1] if devi[i] > stage.force_devi_threshold_eV_A]
    return sorted(over[: stage.n_frames])


def label(
    frames: Sequence[Atoms],
    labeler: Any,
    folder: str | os.PathLike,
    *,
    executor: Executor | None = None,
    timeout_s: float | None = None,
    replace_mismatched: bool = False,
) -> LabelResult:
    """Label ``frames`` (see :func:`pfd_ase.label.label_frames`: ``timeout_s`` its
    per-task wall-time limit, ``replace_mismatched`` what happens to a ``folder`` of other
    frames or another labeler); the labelled frames are also written to
    ``folder/labelled.extxyz`` (:data:`LABELLED_FILE`)."""
    from pfd_ase.label import label_frames

    folder = Path(folder)
    result = label_frames(
        list(frames),
        labeler,
        folder,
        executor,
        timeout_s=timeout_s,
        replace_mismatched=replace_mismatched,
    )
    write_frames(folder / LABELLED_FILE, result.frames)
    return result


@dataclass
class Evaluation:
    """Errors of a model on frames.

    Attributes
    ----------
    n_frames
        Frames evaluated.
    force_rmse_eV_A
        Force RMSE over every component (eV/Å); ``None`` without frames.
    energy_rmse_eV_atom
        Energy RMSE per atom (eV/atom); ``None`` without frames.
    max_force_devi_eV_A
        Per frame, the largest atomic force deviation from the reference
        (:func:`~pfd_ase.calculators.deviation.force_deviation`, eV/Å).
    """

    n_frames: int = 0
    force_rmse_eV_A: float | None = None
    energy_rmse_eV_atom: float | None = None
    max_force_devi_eV_A: list[float] = field(default_factory=list)


def evaluate(model: Any, frames: Sequence[Atoms], *, reference: Any = None) -> Evaluation:
    """Errors of ``model`` on labelled ``frames``, or against a ``reference`` model.

    Parameters
    ----------
    model
        Model file, pre-trained name or ASE calculator.
    frames
        Labelled frames; with ``reference``, any frames (the reference labels them).
    reference
        A model (file, name or calculator) whose predictions are the labels: a student
        against its teacher.
    """
    from pfd_ase.training.evaluate import evaluate as model_errors
    from pfd_ase.training.evaluate import predict

    frames = list(frames)
    if not frames:
        return Evaluation()
    if reference is not None:
        from ase.calculators.singlepoint import SinglePointCalculator

        labelled = []
        for atoms, pred in zip(frames, predict(reference, frames, stress=False), strict=True):
            new = bare(atoms)
            new.calc = SinglePointCalculator(new, energy=pred["energy"], forces=pred["forces"])
            labelled.append(new)
        frames = labelled
    errors = model_errors(model, frames, return_predictions=True)
    ref_forces = [np.asarray(a.calc.results["forces"], dtype=float) for a in frames]
    devi = [
        float(force_deviation(pred["forces"][None], ref).max()) if len(ref) else 0.0
        for pred, ref in zip(errors["predictions"], ref_forces, strict=True)
    ]
    return Evaluation(len(frames), errors["force_rmse"], errors["energy_rmse"], devi)


@dataclass
class TrainOutput:
    """A trained model.

    Attributes
    ----------
    model
        The model file.
    compressed
        The compressed student (``None``: not compressed).
    info
        What the training reported.
    checkpoint
        A student's training checkpoint (to start the next student from).
    """

    model: str
    compressed: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None

    @property
    def best(self) -> str:
        """The model to use: the compressed one where there is one."""
        return self.compressed or self.model


def train(
    config: TrainConfig,
    frames: Sequence[Atoms],
    folder: str | os.PathLike,
    *,
    progress: bool = True,
) -> TrainOutput:
    """Train a model on labelled ``frames`` in ``folder``; the training part of the
    validation split repeated as ``config.structure_weights`` says
    (:func:`pfd_ase.data.weighted`).

    A teacher fine-tunes ``config.base_model``: deepmd-kit (``finetune``, seed
    ``config.seed + 1``), CHGNet (``finetune_chgnet``) or SevenNet (``finetune_sevennet``;
    both ``config.chgnet_epochs`` epochs, seed ``config.seed``, stress loss weight
    ``config.stress_weight`` unless ``None``). A student is a deepmd-kit se_atten_v2 model
    trained from scratch, or from ``config.init_model`` (a checkpoint), with
    ``train_student`` (seed ``config.seed + 2``), compressed if ``config.compress``.
    """
    frames = list(frames)
    weights = {"structure_weights": config.structure_weights}
    type_map = list(config.type_map) if config.type_map is not None else None
    if config.role == "student":
        from pfd_ase.training.stages import train_student

        result = train_student(
            frames,
            folder,
            type_map=type_map,
            steps=config.steps,
            compress=config.compress,
            virial=config.virial,
            seed=config.seed + 2,
            progress=progress,
            learning_rate=config.learning_rate,
            init_model=config.init_model,
            loss=config.loss,
            **weights,
            **({} if config.sel is None else {"sel": config.sel}),
        )
        compressed = str(result.compressed) if result.compressed else None
        return TrainOutput(str(result.model), compressed, dict(result.info), str(result.checkpoint))
    from pfd_ase.models import resolve_model

    spec = resolve_model(config.base_model, head=config.head)
    stress = {} if config.stress_weight is None else {"stress_weight": config.stress_weight}
    if spec.kind == "chgnet":
        from pfd_ase.training.chgnet import finetune_chgnet

        base = str(spec.path) if spec.path is not None else spec.source
        model = finetune_chgnet(
            frames,
            folder,
            epochs=config.chgnet_epochs,
            seed=config.seed,
            base=base,
            **stress,
            **weights,
        )
        return TrainOutput(str(model))
    if spec.kind == "sevennet":
        from pfd_ase.training.sevennet import finetune_sevennet

        base = str(spec.path) if spec.path is not None else "7net-0"
        model = finetune_sevennet(
            frames,
            folder,
            epochs=config.chgnet_epochs,
            seed=config.seed,
            base=base,
            progress=progress,
            **stress,
            **weights,
        )
        return TrainOutput(str(model))
    from pfd_ase.training.stages import finetune

    result = finetune(
        spec,  # resolved with its head: a multi-task checkpoint needs it
        frames,
        folder,
        head=config.head,
        type_map=type_map,
        steps=config.steps,
        learning_rate=config.learning_rate,
        virial=config.virial,
        seed=config.seed + 1,
        progress=progress,
        **weights,
    )
    return TrainOutput(str(result.model), None, dict(result.info))
