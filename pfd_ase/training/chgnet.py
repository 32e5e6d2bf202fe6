"""Fine-tuning of the universal CHGNet (offline base model) with ``chgnet.trainer.Trainer``.

The pre-trained CHGNet ships inside the ``chgnet`` wheel, so this is the base model of
every recipe when no deepmd-kit DPA checkpoint is at hand: CHGNet is fine-tuned on the
system's labelled frames, then distilled into a deepmd-kit student.

:func:`finetune_chgnet` turns labelled ASE frames into CHGNet training data, refits the
elemental reference energies of CHGNet's composition model to the new labels by least
squares (the analogue of the energy-bias refit of DPA-2 eq. 6), holds out a seeded
validation share, trains every layer (optionally freezing some, e.g. CHGNet's recipe)
and keeps the epoch of lowest validation loss. It writes ``chgnet_finetuned.pth.tar``
(CHGNet ``Trainer.save`` format, loaded by :class:`~pfd_ase.calculators.PFDCalculator`)
and records settings, versions, per-epoch errors and wall time in ``pfd_train.json``.

Label conventions for CHGNet's trainer (checked against ``chgnet`` 0.4.2 sources):

* ``e``: energy per atom (eV/atom) for CHGNet's intensive models;
* ``f``: forces (eV/Å);
* ``s``: stress in GPa with the sign of CHGNet's own prediction,
  ``σ = (1/V) ∂E/∂ε`` — ASE's sign (positive under tension). CHGNet's ``StructureData``
  reads VASP stresses (kBar, positive under compression) and multiplies them by -0.1
  to reach this; here the targets are built directly: ``σ_ASE [eV/Å³] × 160.21766208``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress

from pfd_ase._io import atomic_path, write_json
from pfd_ase.calculators.chgnet import (
    GPA_PER_EV_A3,
    atoms_to_structure,
    load_chgnet_model,
    read_chgnet_checkpoint,
)
from pfd_ase.data import weighted
from pfd_ase.training.finetuning import (
    RECORD_FILE,
    Tee,
    check_finetune_inputs,
    data_digest,
    distribution_versions,
    early_stop_due,
    early_stop_line,
    epoch_generator,
    epoch_line,
    fit_element_shifts,
    frame_ids,
    new_record,
    previous_record,
    split_validation,
    torch_state,
    valid_loss,
    with_stress_labels,
)

__all__ = [
    "CHECKPOINT_NAME",
    "RECORD_FILE",
    "chgnet_targets",
    "default_freeze_layers",
    "finetune_chgnet",
    "frames_to_graphs",
    "refit_composition_energies",
    "split_validation",
    "valid_loss",
]

#: Name of the fine-tuned checkpoint (``*.pth.tar``: recognised by ``load_backend``).
CHECKPOINT_NAME = "chgnet_finetuned.pth.tar"
_EPOCH_DIR = "epochs"
_LOG_FILE = "chgnet_train.log"
_BEST = "best.pth.tar"


# --------------------------------------------------------------------------- data
def chgnet_targets(atoms: Atoms, intensive: bool = True) -> dict[str, np.ndarray]:
    """CHGNet training targets of one labelled frame, as numpy arrays.

    Returns ``{"e": energy per atom (eV/atom; total eV if not intensive), "f": forces
    (eV/Å), "s": stress (GPa, 3×3, ASE sign) — only for periodic frames with a stress
    label}``.
    """
    calc = atoms.calc
    if calc is None or "energy" not in calc.results or "forces" not in calc.results:
        raise ValueError("CHGNet fine-tuning needs labelled frames (energy and forces)")
    results = calc.results
    n = len(atoms)
    out = {
        "e": np.asarray(results["energy"] / n if intensive else results["energy"], dtype=float),
        "f": np.asarray(results["forces"], dtype=float).reshape(n, 3),
    }
    if atoms.pbc.all() and results.get("stress") is not None:
        stress = np.asarray(results["stress"], dtype=float)
        full = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress
        out["s"] = full.reshape(3, 3) * GPA_PER_EV_A3
    return out


def frames_to_graphs(
    frames: Sequence[Atoms], model: Any, with_stress: bool, prefix: str = "train"
) -> list[tuple[Any, dict[str, Any]]]:
    """``(CrystalGraph, targets)`` pairs ready for ``chgnet.data.dataset.collate_graphs``.

    Graphs are built once with the model's own converter (its cutoffs); a frame CHGNet
    cannot take (an isolated atom, an unknown element) raises ``ValueError`` naming it.
    """
    import torch

    data = []
    for i, atoms in enumerate(frames):
        targets = chgnet_targets(atoms, intensive=model.is_intensive)
        if with_stress and "s" not in targets:
            raise ValueError(f"{prefix} frame {i} has no stress label")
        try:
            graph = model.graph_converter(
                atoms_to_structure(atoms), graph_id=f"{prefix}-{i}", mp_id=f"{prefix}-{i}"
            )
        except Exception as exc:
            raise ValueError(
                f"CHGNet cannot take {prefix} frame {i} ({atoms.get_chemical_formula()}): {exc}"
            ) from exc
        item = {k: torch.tensor(v, dtype=torch.float32) for k, v in targets.items()}
        if not with_stress:
            item.pop("s", None)
        data.append((graph, item))
    return data


# --------------------------------------------------------------------------- model set-up
def default_freeze_layers(model: Any) -> list[str]:
    """CHGNet's fine-tuning recipe: freeze embeddings, basis expansions and every
    interaction layer but the last atom convolution; train the rest (last atom
    convolution, bond weights, read-out)."""
    n_atom_conv = len(model.atom_conv_layers)
    return [
        "atom_embedding",
        "bond_embedding",
        "angle_embedding",
        "bond_basis_expansion",
        "angle_basis_expansion",
        *(f"atom_conv_layers.{i}" for i in range(n_atom_conv - 1)),
        "bond_conv_layers",
        "angle_layers",
    ]


def _freeze(model: Any, prefixes: Sequence[str]) -> tuple[int, int]:
    """Set ``requires_grad = False`` on parameters under ``prefixes``; return (trainable, all)."""
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"freeze_layers: no parameters under {prefix!r}; modules: {tops}")
    for name, param in model.named_parameters():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            param.requires_grad = False
    trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    # the composition model is frozen by the trainer itself (train_composition_model=False)
    trainable -= sum(p.numel() for p in model.composition_model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def refit_composition_energies(model: Any, data: Sequence[tuple[Any, dict]]) -> dict[str, float]:
    """Shift CHGNet's elemental reference energies to fit the labels by least squares.

    The residual ``e_label - e_CHGNet`` of each frame (per atom for intensive models) is
    fitted as ``Σ_el x_el δ_el`` (``x_el``: fraction, or count, of element ``el``) and
    ``δ_el`` is added to the composition model's weight of that element
    (:func:`~pfd_ase.training.finetuning.fit_element_shifts`; a model that is not intensive
    is fitted on its residuals per atom as well); for one element this is the mean
    residual per atom. Returns ``{element: δ (eV/atom)}``.
    """
    import torch
    from ase.data import chemical_symbols

    comp = getattr(model, "composition_model", None)
    if comp is None or not hasattr(comp, "fc"):
        return {}
    graphs = [g for g, _ in data]
    preds = model.predict_graph(graphs, task="e", batch_size=16)
    preds = [preds] if isinstance(preds, dict) else preds
    labels = np.array([float(t["e"]) for _, t in data])
    residual = labels - np.array([float(p["e"]) for p in preds])
    numbers = [g.atomic_number.numpy() for g in graphs]
    if not model.is_intensive:
        residual = residual / np.array([len(z) for z in numbers])
    shifts = fit_element_shifts(numbers, residual)
    with torch.no_grad():
        for z, d in shifts.items():
            comp.fc.weight[0, z - 1] += d
    return {chemical_symbols[z]: d for z, d in shifts.items()}


# --------------------------------------------------------------------------- helpers
def _latest_epoch_checkpoint(epoch_dir: Path) -> tuple[int, Path] | None:
    found = []
    for p in epoch_dir.glob("epoch*_*.pth.tar"):
        try:
            found.append((int(p.name[len("epoch") :].split("_")[0]), p))
        except ValueError:
            continue
    return max(found) if found else None


# --------------------------------------------------------------------------- fine-tuning
def finetune_chgnet(
    train_frames: Sequence[Atoms],
    workdir: str | os.PathLike,
    valid_frames: Sequence[Atoms] | None = None,
    *,
    epochs: int = 20,
    learning_rate: float = 3e-3,
    batch_size: int = 4,
    base: str | os.PathLike = "0.3.0",
    freeze_layers: Sequence[str] | None = (),
    refit_energy_bias: bool = True,
    energy_weight: float = 1.0,
    force_weight: float = 1.0,
    stress_weight: float = 0.001,
    valid_fraction: float = 0.1,
    min_valid_frames: int = 5,
    structure_weights: Mapping[str, int] | None = None,
    early_stopping: int | None = None,
    seed: int = 0,
    use_device: str | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Fine-tune CHGNet on labelled frames; return ``workdir/chgnet_finetuned.pth.tar``.

    Parameters
    ----------
    train_frames
        Labelled frames (energy, forces; stress used when every frame has one).
    workdir
        Output folder: the checkpoint, ``pfd_train.json``, ``chgnet_train.log`` (CHGNet's
        own output) and ``epochs/`` (CHGNet's per-epoch trainer states, for resuming, and
        ``best.pth.tar``, the best epoch so far).
    valid_frames
        Frames to validate on after each epoch. ``None``: a seeded share
        ``valid_fraction`` of ``train_frames`` is held out (:func:`split_validation`);
        ``[]``: no validation.
    epochs, learning_rate, batch_size
        Adam with a cosine schedule decaying to 1 % of ``learning_rate`` over the
        ``epochs`` (stepped up to ten times per epoch, as CHGNet's trainer does).
        Defaults from ``bench/chgnet_finetune.py`` (issue 14): on 14 SW-labelled Si
        frames of eight phases 20 epochs at 3e-3 reach a held-out force RMSE of
        0.58 eV/Å (base 1.33); 30 epochs at 1e-3 0.82, 10 epochs at 3e-3 0.79.
    base
        Pre-trained version (``"0.3.0"``, ``"chgnet"``, ``"CHGNet-0.3.0"``, …) or a
        CHGNet checkpoint file (e.g. the previous iteration's fine-tuned model).
    freeze_layers
        Parameter-name prefixes to freeze (``"atom_conv_layers.0"``, ``"bond_conv_layers"``,
        …). ``()`` (default): train all; ``None``: CHGNet's recipe
        (:func:`default_freeze_layers`), which learned less in the benchmark (held-out
        force RMSE 0.89 vs 0.82 eV/Å, vacancy frames worse than the base model; read-out
        only: 1.19 vs 1.04 after 5 epochs). The composition model (elemental reference
        energies) is never trained.
    refit_energy_bias
        Least-squares refit of the elemental reference energies to the training labels
        before training (:func:`refit_composition_energies`).
    energy_weight, force_weight, stress_weight
        Loss weights (MSE of eV/atom, eV/Å and GPa). Stress is a target only when every
        training and validation frame is periodic with a stress label. The stress weight
        is small because stress errors in GPa are large numbers: with CHGNet's 0.1, a
        base model off by tens of GPa (SW's high-pressure phases; a few GPa suffice with
        DFT) spends nearly the whole loss on stress and the forces barely move (held-out
        force RMSE after 30 epochs: 1.02 eV/Å with 0.1, 0.98 with 0.01, 0.82 with 0.001;
        stress RMSE 36, 16 and 16 GPa).
    valid_fraction
        Share of ``train_frames`` held out for validation when ``valid_frames`` is
        ``None`` (``0``: none). The held-out frames are not trained on; they choose the
        epoch returned.
    min_valid_frames
        Hold out only when the share is at least this many frames (with 10 %: 50 frames
        or more); otherwise train on every frame and return the last epoch. A smaller
        validation set picks the epoch by noise and costs training data: on the quick
        silicon run's 14 GPAW frames a one-frame split chose epoch 2 of 20, held-out
        force RMSE 0.188 eV/Å and Γ-optical phonon 11.87 THz, against 0.117 eV/Å and
        15.51 THz trained on all 14 (GPAW: 15.45 THz).
    structure_weights
        Each training frame of structure ``name`` (``info["pfd_structure"]``) enters the
        training ``structure_weights[name]`` times, after the validation split
        (:func:`pfd_ase.data.weighted`); ``None``: once.
    early_stopping
        Stop when the validation loss has not improved for this many epochs
        (``None``: train all ``epochs``). Needs validation frames.
    seed
        Seeds torch inside ``torch.random.fork_rng`` (the caller's torch RNG state is
        restored afterwards), each epoch's data order (a generator per epoch from
        ``np.random.default_rng([seed, epoch])``) and the validation split; no global
        seed is left behind.
    use_device
        Torch device (``None``: CHGNet's choice, CUDA when available).
    threads
        Torch intra-op threads during training (restored afterwards; ``None``: unchanged).
    progress
        Print one line per epoch (errors, steps, seconds per epoch, ETA) to stdout.
        CHGNet's own output always goes to ``chgnet_train.log`` only.

    Returns
    -------
    Path
        The fine-tuned checkpoint: with validation frames, the epoch of lowest validation
        loss (:func:`valid_loss`; epoch 0 is the base model after the energy refit);
        without, the last epoch.

    Notes
    -----
    ``pfd_train.json`` records the settings, the validation split, per-epoch train and
    validation MAEs and validation loss, ``initial_valid_mae`` / ``initial_valid_loss``
    (epoch 0), ``best_epoch``, ``best_valid_loss`` and ``stopped_early``.

    Resumable: a finished run with the same settings and data is not repeated; an
    interrupted run continues from its last completed epoch (model, optimiser and
    scheduler states, best epoch so far); a run with other settings starts afresh in
    the same folder.
    """
    train_frames = list(train_frames)
    check_finetune_inputs(train_frames, valid_frames, epochs, batch_size, early_stopping)
    split = valid_frames is None
    if split:
        train_frames, valid_frames = split_validation(
            train_frames, valid_fraction, seed, min_valid_frames
        )
    train_frames = weighted(train_frames, structure_weights)  # after the split: no copy validated
    valid_frames = list(valid_frames or [])
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    epoch_dir = workdir / _EPOCH_DIR
    final = workdir / CHECKPOINT_NAME
    record_path = workdir / RECORD_FILE

    settings = {
        "base": os.fspath(base),
        "epochs": int(epochs),
        "learning_rate": float(learning_rate),
        "batch_size": int(batch_size),
        "freeze_layers": None if freeze_layers is None else list(freeze_layers),
        "refit_energy_bias": bool(refit_energy_bias),
        "loss_weights": {"e": energy_weight, "f": force_weight, "s": stress_weight},
        "valid_fraction": float(valid_fraction) if split else None,
        "min_valid_frames": int(min_valid_frames) if split else None,
        "early_stopping": None if early_stopping is None else int(early_stopping),
        "seed": int(seed),
        "n_train": len(train_frames),
        "n_valid": len(valid_frames),
        "train_digest": data_digest(train_frames),
        "valid_digest": data_digest(valid_frames),
    }
    record = previous_record(record_path, settings)
    if record.get("done") and final.exists():
        return final
    resume = _latest_epoch_checkpoint(epoch_dir) if record else None
    if not record:  # a fresh run: forget what an earlier run left
        for old in (*epoch_dir.glob("*.pth.tar"), final):
            old.unlink(missing_ok=True)

    log = open(workdir / _LOG_FILE, "a")  # noqa: SIM115 - closed in finally
    try:
        out = Tee(sys.stdout, log) if progress else log
        device = _device_name(use_device)
        with torch_state(seed, threads, device):
            return _run(
                settings, record, resume, (train_frames, valid_frames), workdir, out, log, device
            )
    finally:
        log.close()


def _cosine_scheduler(optimizer: Any, learning_rate: float, epochs: int, n_batches: int) -> Any:
    """Cosine decay to 1 % of ``learning_rate`` over the whole run.

    CHGNet's trainer steps its scheduler at most ten times per epoch (at batches
    ``k · n_batches // 10``, distinct values only) but sizes its ``CosLR`` for exactly ten:
    with fewer than ten batches per epoch the rate never decays. This one is sized for the
    steps the trainer really takes.
    """
    from torch.optim.lr_scheduler import CosineAnnealingLR

    marks = set((np.arange(1, 11) * n_batches // 10).tolist()) & set(range(1, n_batches + 1))
    return CosineAnnealingLR(
        optimizer, T_max=max(1, epochs * len(marks)), eta_min=0.01 * learning_rate
    )


def _run(
    settings: dict[str, Any],
    record: dict[str, Any],
    resume: tuple[int, Path] | None,
    frames: tuple[list[Atoms], list[Atoms]],
    workdir: Path,
    out: TextIO,
    log: TextIO,
    device: str,
) -> Path:
    """The training run proper (inside :func:`~pfd_ase.training.finetuning.torch_state`)."""
    import shutil

    from chgnet.data.dataset import collate_graphs
    from chgnet.model import CHGNet
    from chgnet.trainer import Trainer
    from torch.utils.data import DataLoader

    train_frames, valid_frames = frames
    epoch_dir = workdir / _EPOCH_DIR
    best_path = epoch_dir / _BEST
    final = workdir / CHECKPOINT_NAME
    record_path = workdir / RECORD_FILE
    epochs = settings["epochs"]
    weights = settings["loss_weights"]
    t_start = time.perf_counter()
    wall_before = float(record.get("wall_s", 0.0))

    state = None
    if resume is not None:  # continue from the last completed epoch
        state = read_chgnet_checkpoint(resume[1])  # weights_only: tensors and plain data
        with contextlib.redirect_stdout(log):
            model = CHGNet.from_dict(state["model"])
    else:
        model = load_chgnet_model(settings["base"], use_device="cpu")

    with_stress = with_stress_labels(train_frames, valid_frames)
    targets = "efs" if with_stress else "ef"
    train_data = frames_to_graphs(train_frames, model, with_stress, "train")
    valid_data = frames_to_graphs(valid_frames, model, with_stress, "valid")

    freeze = settings["freeze_layers"]
    freeze = default_freeze_layers(model) if freeze is None else freeze
    n_trainable, n_params = _freeze(model, freeze)

    if state is None:
        shifts = {}
        if settings["refit_energy_bias"]:
            shifts = refit_composition_energies(model, train_data)
        record = new_record(
            settings,
            versions=distribution_versions("chgnet", "torch", "pymatgen", "ase", "pfd_ase"),
            base_version=model.version,
            targets=targets,
            frozen=list(freeze),
            n_params=n_params,
            n_trainable=n_trainable,
            energy_shift_eV_per_atom=shifts,
            valid_split=frame_ids(valid_frames),
        )

    # CHGNet's trainer prints: into the log file
    with contextlib.redirect_stdout(log):
        trainer = Trainer(
            model=model,
            targets=targets,
            energy_loss_ratio=weights["e"],
            force_loss_ratio=weights["f"],
            stress_loss_ratio=weights["s"],
            optimizer="Adam",
            scheduler="CosLR",
            criterion="MSE",
            epochs=epochs,
            learning_rate=settings["learning_rate"],
            print_freq=max(1, len(train_data) // settings["batch_size"] // 4),
            use_device=device,
        )
        n_batches = -(-len(train_data) // settings["batch_size"])
        trainer.scheduler = _cosine_scheduler(
            trainer.optimizer, settings["learning_rate"], epochs, n_batches
        )
        valid_loader = (
            DataLoader(valid_data, batch_size=settings["batch_size"], collate_fn=collate_graphs)
            if valid_data
            else []
        )
        start_epoch = 0
        if state is not None:
            trainer.optimizer.load_state_dict(state["optimizer"])
            trainer.scheduler.load_state_dict(state["scheduler"])
            trainer.training_history = state["training_history"]
            start_epoch = resume[0] + 1
            record["history"] = record.get("history", [])[:start_epoch]
            if len(record["history"]) < start_epoch:  # killed between checkpoint and record
                _recover_last_row(record, trainer, targets, weights, valid_data, best_path)
        elif valid_data:  # epoch 0: the base model after the energy refit
            trainer.model.to(trainer.device)
            mae = trainer._validate(valid_loader)  # noqa: SLF001 - CHGNet's own metric
            record["initial_valid_mae"] = {k: mae[k] for k in targets}
            record["initial_valid_loss"] = valid_loss(mae, weights)
            _save_best(trainer, best_path, record, 0, record["initial_valid_loss"])
        write_json(record_path, record)

        for epoch in range(start_epoch, epochs):
            if valid_data and early_stop_due(record, settings["early_stopping"], epoch):
                break
            t0 = time.perf_counter()
            train_loader = DataLoader(
                train_data,
                batch_size=settings["batch_size"],
                shuffle=True,
                collate_fn=collate_graphs,
                generator=epoch_generator(settings["seed"], epoch),
            )
            trainer.starting_epoch, trainer.epochs = epoch, epoch + 1
            trainer.train(train_loader, valid_loader, save_dir=str(epoch_dir))
            hist = trainer.training_history
            if len(hist["e"]["train"]) != epoch + 1:  # CHGNet stops on NaN without a word
                raise RuntimeError(f"CHGNet fine-tuning diverged (NaN) at epoch {epoch + 1}")
            row = _history_row(hist, epoch, targets, weights, bool(valid_data))
            row["steps"] = (epoch + 1) * n_batches
            row["seconds"] = round(time.perf_counter() - t0, 3)
            record["history"].append(row)
            record["epochs_done"] = epoch + 1
            if valid_data and row["valid_loss"] < record["best_valid_loss"]:
                _save_best(trainer, best_path, record, epoch + 1, row["valid_loss"])
            record["wall_s"] = round(wall_before + time.perf_counter() - t_start, 3)
            write_json(record_path, record)
            print(epoch_line("CHGNet", record, row, epochs, start_epoch), file=out, flush=True)
        if valid_data:
            stopped = early_stop_line("CHGNet", record, settings["early_stopping"])
            if stopped:
                print(stopped, file=out, flush=True)
            with atomic_path(final) as tmp:
                shutil.copyfile(best_path, tmp)
        else:
            record["best_epoch"] = record["epochs_done"]
            with atomic_path(final) as tmp:
                trainer.save(filename=str(tmp))
    record.update(
        done=True,
        checkpoint=final.name,
        wall_s=round(wall_before + time.perf_counter() - t_start, 3),
    )
    write_json(record_path, record)
    return final


def _history_row(
    hist: dict[str, dict[str, list[float]]],
    epoch: int,
    targets: str,
    weights: dict[str, float],
    validated: bool,
) -> dict[str, Any]:
    """One ``history`` entry of ``pfd_train.json`` from CHGNet's training history."""
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_mae": {k: hist[k]["train"][epoch] for k in targets},
        "valid_mae": {k: hist[k]["val"][epoch] for k in targets} if validated else None,
    }
    row["valid_loss"] = valid_loss(row["valid_mae"], weights) if validated else None
    return row


def _save_best(trainer: Any, path: Path, record: dict[str, Any], epoch: int, loss: float) -> None:
    """Save the trainer's state as the best epoch so far (before the record says so)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        trainer.save(filename=str(tmp))
    record["best_epoch"], record["best_valid_loss"] = epoch, loss


def _recover_last_row(
    record: dict[str, Any],
    trainer: Any,
    targets: str,
    weights: dict[str, float],
    valid_data: list,
    best_path: Path,
) -> None:
    """Rebuild the last epoch's row from the checkpoint being resumed (its record was lost).

    The resumed model is that epoch's model, so it becomes the best one when it was.
    """
    epoch = len(record["history"])
    row = _history_row(trainer.training_history, epoch, targets, weights, bool(valid_data))
    row.update(steps=None, seconds=0.0)
    record["history"].append(row)
    record["epochs_done"] = epoch + 1
    if valid_data and row["valid_loss"] < record["best_valid_loss"]:
        _save_best(trainer, best_path, record, epoch + 1, row["valid_loss"])


def _device_name(use_device: str | None) -> str:
    from chgnet.utils import determine_device

    return str(determine_device(use_device=use_device))
