"""The three PFD training stages on labelled frames: pre-train, fine-tune, train the student.

Each function takes labelled ASE frames (see :mod:`pfd_ase.data`), writes deepmd-kit npy
systems and a deepmd-kit input into ``workdir``, trains in a subprocess, freezes, and
returns a :class:`TrainResult` whose ``model`` any :class:`~pfd_ase.calculators.PFDCalculator`
loads. Reruns are resumable (see :func:`pfd_ase.training.deepmd.train`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms

from pfd_ase.data import split_frames, to_deepmd, weighted
from pfd_ase.models import RANDOM_HEAD, ModelSpec, checkpoint_params, resolve_model
from pfd_ase.training import deepmd as dp


@dataclass
class TrainResult:
    """Paths written by a training stage."""

    workdir: Path
    checkpoint: Path
    model: Path
    compressed: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)


def type_map_of(frames: Sequence[Atoms]) -> list[str]:
    """Elements present in ``frames``, sorted by atomic number."""
    from ase.data import atomic_numbers

    return sorted({s for a in frames for s in a.get_chemical_symbols()}, key=atomic_numbers.get)


def _systems(
    frames: Sequence[Atoms],
    valid_frames: Sequence[Atoms] | None,
    workdir: Path,
    type_map: Sequence[str],
    seed: int,
    structure_weights: Mapping[str, int] | None = None,
) -> tuple[list[Path], list[Path]]:
    if not frames:
        raise ValueError("no training frames")
    if valid_frames is None and len(frames) >= 4:
        frames, valid_frames = split_frames(frames, val_fraction=0.1, seed=seed)
    frames = weighted(frames, structure_weights)  # after the split: no copy validated
    train = to_deepmd(frames, workdir / "data" / "train", type_map)
    valid = to_deepmd(valid_frames, workdir / "data" / "valid", type_map) if valid_frames else []
    return train, valid


def _is_universal(model: str | os.PathLike | ModelSpec) -> bool:
    """Whether ``model`` is CHGNet or SevenNet (fine-tuned by their own functions)."""
    try:
        return resolve_model(model).kind in ("chgnet", "sevennet")
    except ValueError:
        return False


def resolve_base_model(
    name_or_path: str | os.PathLike | ModelSpec, head: str | None = None
) -> Path:
    """A pre-trained deepmd-kit model file: a path as is, or a registry name (``DPA-3.1-3M``).

    Resolved by :func:`pfd_ase.models.resolve_model`; registry names are downloaded by
    deepmd-kit into its cache, which offline fails with a ``RuntimeError`` that says to
    download the checkpoint elsewhere and pass its path.
    """
    path = name_or_path.path if isinstance(name_or_path, ModelSpec) else name_or_path
    not_deepmd = (
        f"{name_or_path!r} is not a deepmd-kit model: CHGNet is fine-tuned by "
        "pfd_ase.training.chgnet.finetune_chgnet (a workflow config with base_model: chgnet), "
        "SevenNet by pfd_ase.training.sevennet.finetune_sevennet"
    )
    chosen = head is None and not str(path).endswith(".pth")
    if chosen:
        head = RANDOM_HEAD  # no head given: a fresh fitting net (any checkpoint, multi-task too)
    try:
        spec = resolve_model(name_or_path, head=head, fetch=True)
    except ValueError:
        if chosen and _is_universal(name_or_path):  # it refuses the head chosen here
            raise ValueError(not_deepmd) from None
        raise
    if spec.kind != "deepmd" or spec.path is None:
        raise ValueError(not_deepmd)
    if spec.path.suffix == ".pth":
        _ = spec.type_map  # reads the frozen model: a damaged file fails here, not in deepmd-kit
    return spec.path


def finetune(
    base_model: str | os.PathLike,
    frames: Sequence[Atoms],
    workdir: str | os.PathLike,
    head: str | None = None,
    valid_frames: Sequence[Atoms] | None = None,
    type_map: Sequence[str] | None = None,
    steps: int = 20000,
    learning_rate: Mapping[str, Any] | None = None,
    init_model: str | os.PathLike | None = None,
    seed: int = 1,
    threads: int | None = None,
    progress: bool = True,
    virial: bool = False,
    structure_weights: Mapping[str, int] | None = None,
) -> TrainResult:
    """Fine-tune a pre-trained deepmd-kit checkpoint on labelled frames (PFD step 2).

    ``virial``: fit the stress labels too where the frames carry them
    (:func:`pfd_ase.training.deepmd.default_loss`); off by default (energies and forces), see
    :data:`pfd_ase.training.deepmd.VIRIAL_PREFS`. ``structure_weights``: each training frame
    of a named structure enters that many times, after the validation split
    (:func:`pfd_ase.data.weighted`).

    Parameters
    ----------
    base_model
        Pre-trained checkpoint ``.pt`` (single- or multi-task) or a registry name.
    head
        Branch of a multi-task model whose fitting net is reused; ``"RANDOM"`` or ``None``
        starts from a freshly initialised fitting net. Either way deepmd-kit refits the
        energy bias to the new data by least squares (DPA-2 paper eq. 6).
    type_map
        Elements of the fine-tuned model (default: those in ``frames``); may be a subset
        of the pre-trained model's.
    steps, learning_rate
        Schedule; default 20 000 steps at lr 1e-3 → 3.51e-8 decaying every 200 steps (PFD
        supplement §II.C), every ``steps // 10`` in runs shorter than 2000 steps (see
        :func:`pfd_ase.training.deepmd.learning_rate_section`).
    init_model
        Continue from this checkpoint instead (a later fine-tune iteration): the model
        keeps its weights and no new bias is fitted.
    progress
        Show a progress bar while training (see :func:`pfd_ase.training.deepmd.train`).
    """
    workdir = Path(workdir)
    base = resolve_base_model(base_model, head)  # a wrong head fails here, before training
    type_map = list(type_map or type_map_of(frames))
    train, valid = _systems(frames, valid_frames, workdir, type_map, seed, structure_weights)
    model = {"type_map": type_map, "descriptor": {}, "fitting_net": {}}
    cfg = dp.training_input(
        model,
        train,
        valid,
        steps=steps,
        learning_rate=learning_rate,
        seed=seed,
        loss=None if virial else dp.ENERGY_LOSS,
    )
    if init_model is not None:
        # the model section must be complete for --init-model: take it from the checkpoint
        cfg["model"] = _checkpoint_model_params(init_model)
        ckpt = dp.train(
            cfg, workdir / "train", init_model=init_model, threads=threads, progress=progress
        )
    else:
        ckpt = dp.train(
            cfg,
            workdir / "train",
            finetune=base,
            model_branch=head or RANDOM_HEAD,
            use_pretrain_script=True,
            threads=threads,
            progress=progress,
        )
    model_path = dp.freeze(workdir / "train", workdir / "model.pth")
    return TrainResult(workdir, ckpt, model_path, info={"base_model": str(base), "head": head})


def _checkpoint_model_params(path: str | os.PathLike) -> dict[str, Any]:
    params = dict(checkpoint_params(path))
    for key in ("resuming", "_comment"):
        params.pop(key, None)
    return params


def pretrain(
    datasets: Mapping[str, Sequence[Atoms] | Mapping[str, Any]],
    workdir: str | os.PathLike,
    descriptor: Mapping[str, Any] | None = None,
    steps: int = 100000,
    type_map: Sequence[str] | None = None,
    seed: int = 1,
    threads: int | None = None,
    learning_rate: Mapping[str, Any] | None = None,
    progress: bool = True,
    virial: bool = False,
    batch_size: int | str = dp.PRETRAIN_BATCH_SIZE,
) -> TrainResult:
    """Multi-task pre-training (DPA-2 paper §4.4): one fitting head per dataset, shared descriptor.

    Parameters
    ----------
    datasets
        ``{head: frames}`` or ``{head: {"frames": frames, "weight": w}}`` with sampling
        weight ``w`` (default 1).
    descriptor
        Shared descriptor (default: a tiny DPA-2, :data:`~pfd_ase.training.deepmd.DPA2_TINY`;
        :data:`~pfd_ase.training.deepmd.DPA2_PRODUCTION` is the paper's layout).
    steps
        Training steps (default 100 000; the DPA-2 paper trains 1 000 000, Supplementary §S9).
    learning_rate
        deepmd-kit ``learning_rate`` section; default the DPA-2 paper's (Supplementary §S9):
        lr 2e-4 → 3e-8 decaying every 5000 steps, every ``steps // 10`` in runs shorter than
        50 000 steps (see :func:`pfd_ase.training.deepmd.learning_rate_section`).
    batch_size
        Frames per training batch (default 8, the DPA-2 paper's, Supplementary §S3);
        ``"auto"`` lets deepmd-kit choose (at least 32 atoms a batch).
    progress
        Show a progress bar while training (see :func:`pfd_ase.training.deepmd.train`).
    virial
        Fit the stress labels too (see :data:`pfd_ase.training.deepmd.VIRIAL_PREFS` for why
        this is off by default in every PFD stage).

    Returns
    -------
    TrainResult
        ``checkpoint`` is the multi-task ``.pt`` that :func:`finetune` takes with ``head=``.
    """
    workdir = Path(workdir)
    if not datasets:
        raise ValueError("pre-training needs at least one dataset")
    specs = {
        name: dict(spec) if isinstance(spec, Mapping) else {"frames": spec}
        for name, spec in datasets.items()
    }
    all_frames = [a for spec in specs.values() for a in spec["frames"]]
    type_map = list(type_map or type_map_of(all_frames))
    branches = {}
    for name, spec in specs.items():
        train, valid = _systems(spec["frames"], None, workdir / name, type_map, seed)
        branches[name] = {"train": train, "valid": valid or None, "weight": spec.get("weight", 1)}
    cfg = dp.multitask_input(
        type_map,
        branches,
        descriptor=descriptor,
        steps=steps,
        learning_rate=learning_rate,
        seed=seed,
        batch_size=batch_size,
    )
    if not virial:
        cfg["loss_dict"] = {name: dict(dp.ENERGY_LOSS) for name in cfg["loss_dict"]}
    ckpt = dp.train(cfg, workdir / "train", threads=threads, progress=progress)
    return TrainResult(workdir, ckpt, ckpt, info={"heads": list(specs), "type_map": type_map})


def train_student(
    frames: Sequence[Atoms],
    workdir: str | os.PathLike,
    valid_frames: Sequence[Atoms] | None = None,
    type_map: Sequence[str] | None = None,
    steps: int = 100000,
    compress: bool = True,
    init_model: str | os.PathLike | None = None,
    seed: int = 1,
    threads: int | None = None,
    progress: bool = True,
    learning_rate: Mapping[str, Any] | None = None,
    batch_size: int | str = 1,
    virial: bool = False,
    loss: Mapping[str, float] | None = None,
    structure_weights: Mapping[str, int] | None = None,
    **descriptor_overrides: Any,
) -> TrainResult:
    """Train the distilled student (se_atten_v2, attn_layer 0, rcut 6.5 Å), freeze, compress.

    The default schedule is the PFD supplement's (§II.C): lr 0.01 → 1e-8 decaying every 2000
    steps (every ``steps // 10`` in runs shorter than 20 000 steps, see
    :func:`pfd_ase.training.deepmd.learning_rate_section`), batch size 1; the paper trains
    1 000 000 steps, the default here is 100 000.

    Compression (``dp --pt compress``) needs deepmd-kit's custom operators; when it fails
    the reason is recorded in ``info["compress_error"]`` and ``compressed`` is None, so
    callers fall back to the uncompressed ``model``. ``progress`` shows a progress bar while
    training (see :func:`pfd_ase.training.deepmd.train`). ``virial``: fit the stress labels
    too where the frames carry them (off by default, see
    :data:`pfd_ase.training.deepmd.VIRIAL_PREFS`). ``loss``: loss prefactors (e.g.
    ``{"limit_pref_e": 10}``) over :func:`pfd_ase.training.deepmd.default_loss`.
    ``structure_weights``: each training frame of a named structure enters that many times,
    after the validation split (:func:`pfd_ase.data.weighted`).
    """
    workdir = Path(workdir)
    type_map = list(type_map or type_map_of(frames))
    section = None if virial else dp.ENERGY_LOSS
    if loss:
        section = {**dp.default_loss(virial), **loss}
    train, valid = _systems(frames, valid_frames, workdir, type_map, seed, structure_weights)
    cfg = dp.student_input(
        type_map,
        train,
        valid,
        steps=steps,
        seed=seed,
        learning_rate=learning_rate,
        batch_size=batch_size,
        descriptor=descriptor_overrides,
        loss=section,
    )
    ckpt = dp.train(
        cfg, workdir / "train", init_model=init_model, threads=threads, progress=progress
    )
    model_path = dp.freeze(workdir / "train", workdir / "model.pth")
    result = TrainResult(workdir, ckpt, model_path)
    if compress:
        try:
            result.compressed = dp.compress(
                model_path, workdir / "model_compressed.pth", threads=threads
            )
        except RuntimeError as exc:
            result.info["compress_error"] = str(exc).splitlines()[-1]
    return result
