"""Fine-tuning of SevenNet-0 (a universal base model beside CHGNet) with ``sevenn``'s trainer.

SevenNet-0 ships inside the ``sevenn`` wheel (``pip install sevenn``, or the ``sevennet``
extra). :func:`finetune_sevennet` keeps the contract of
:func:`pfd_ase.training.chgnet.finetune_chgnet`: labelled ASE frames become ``sevenn``
graphs (``sevenn.train.dataload.atoms_to_graph``, the model's own cutoff); the per-element
energy shift of SevenNet's output block (``rescale_atomic_energy.shift``, its reference
energies) is refitted to the labels by least squares before training (the analogue of the
energy-bias refit of DPA-2 eq. 6); a seeded validation share is held out
(:func:`~pfd_ase.training.finetuning.split_validation`); every layer is trained with
``sevenn.train.trainer.Trainer`` (Adam, cosine decay, ``sevenn``'s per-atom energy, force
and stress losses) and the epoch of lowest validation loss is kept. It writes
``sevennet_finetuned.pth`` (``sevenn``'s checkpoint format, loaded by
:class:`~pfd_ase.calculators.PFDCalculator` and by ``sevenn`` itself) and records settings,
versions, per-epoch errors and wall time in ``pfd_train.json``.

Label conventions of ``sevenn`` (checked against ``sevenn`` 0.13.0 sources):

* energy: total (eV); the loss is on the energy per atom;
* forces: eV/Å;
* stress: eV/Å³, order ``xx yy zz xy yz zx``, sign opposite to ASE's (positive under
  compression): ``-σ_ASE``; the loss is taken in kbar (``sevenn``'s ``StressLoss``), the
  errors recorded here in GPa.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress

from pfd_ase._io import atomic_path, write_json
from pfd_ase.calculators.sevennet import (
    import_sevenn,
    load_sevennet_model,
    quiet_jit,
    sevennet_device,
    sevennet_version,
)
from pfd_ase.data import weighted
from pfd_ase.models import read_sevennet_checkpoint, resolve_model
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
    "LOSSES",
    "RECORD_FILE",
    "finetune_sevennet",
    "frames_to_graphs",
    "refit_energy_shift",
    "sevennet_stress",
]

#: Name of the fine-tuned checkpoint (a ``.pth`` that ``sevenn`` reads; recognised by
#: :func:`pfd_ase.models.is_sevennet_checkpoint`).
CHECKPOINT_NAME = "sevennet_finetuned.pth"
#: Loss criteria: ``sevenn``'s fine-tuning preset uses Huber (δ = 0.01), as SevenNet-0 was
#: trained; ``"mse"`` is the squared error.
LOSSES = ("huber", "mse")
#: GPa per eV/Å³ (``sevenn``'s own factor, ``error_recorder``).
_GPA = 160.21766208
_EPOCH_DIR = "epochs"
_BEST = "best.pth"
_LOG_FILE = "sevennet_train.log"


# --------------------------------------------------------------------------- data
def sevennet_stress(stress: np.ndarray) -> np.ndarray:
    """``sevenn``'s stress label of an ASE stress (Voigt or 3×3, eV/Å³, ASE sign).

    Returns ``-σ`` in the order ``xx yy zz xy yz zx`` (eV/Å³), shape ``(6,)``.
    """
    stress = np.asarray(stress, dtype=float)
    full = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress.reshape(3, 3)
    return -np.array([full[0, 0], full[1, 1], full[2, 2], full[0, 1], full[1, 2], full[2, 0]])


def frames_to_graphs(
    frames: Sequence[Atoms], config: dict[str, Any], with_stress: bool, prefix: str = "train"
) -> list[Any]:
    """Labelled ``sevenn`` graphs (``AtomGraphData``) of labelled frames.

    Built once with the model's cutoff; energy from ``results["energy"]``, forces, and
    the stress (:func:`sevennet_stress`) when ``with_stress`` (otherwise NaN, which
    ``sevenn``'s losses skip). A frame with an element the model does not know raises
    ``ValueError`` naming it.
    """
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.train.dataload import atoms_to_graph

    known = set(config["chemical_species"])
    cutoff = float(config["cutoff"])
    graphs = []
    for i, atoms in enumerate(frames):
        unknown = sorted(set(atoms.get_chemical_symbols()) - known)
        if unknown:
            raise ValueError(
                f"SevenNet does not know element(s) {unknown} of {prefix} frame {i} "
                f"({atoms.get_chemical_formula()})"
            )
        results = atoms.calc.results
        bare = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        bare.info["y_energy"] = float(results["energy"])
        bare.arrays["y_force"] = np.asarray(results["forces"], dtype=float).reshape(-1, 3)
        if with_stress:
            if results.get("stress") is None:
                raise ValueError(f"{prefix} frame {i} has no stress label")
            bare.info["y_stress"] = sevennet_stress(results["stress"])
        graphs.append(AtomGraphData.from_numpy_dict(atoms_to_graph(bare, cutoff, False)))
    return graphs


# --------------------------------------------------------------------------- errors
class _Errors:
    """Collects errors of the batches ``sevenn``'s ``Trainer.run_one_epoch`` passes it."""

    def __init__(self, with_stress: bool) -> None:
        self.with_stress = with_stress
        self.energy: list[tuple[float, float]] = []  # (predicted, label) per atom
        self.force_abs = 0.0
        self.force_n = 0
        self.stress_abs = 0.0
        self.stress_n = 0

    def update(self, output: dict[str, Any]) -> None:
        import sevenn._keys as key

        n = output[key.NUM_ATOMS].detach().double()
        pred = (output[key.PRED_TOTAL_ENERGY].detach().double() / n).tolist()
        ref = (output[key.ENERGY].detach().double() / n).tolist()
        self.energy += list(zip(pred, ref, strict=True))
        df = (output[key.PRED_FORCE] - output[key.FORCE]).detach().double()
        self.force_abs += float(df.abs().sum())
        self.force_n += df.numel()
        if self.with_stress:
            ds = (output[key.PRED_STRESS] - output[key.STRESS]).detach().double()
            self.stress_abs += float(ds.abs().sum()) * _GPA
            self.stress_n += ds.numel()

    def mae(self) -> dict[str, float]:
        """``{"e": eV/atom, "f": eV/Å, "s": GPa (with stress)}``; NaN raises."""
        e = np.array(self.energy)
        out = {"e": float(np.abs(e[:, 0] - e[:, 1]).mean()), "f": self.force_abs / self.force_n}
        if self.with_stress:
            out["s"] = self.stress_abs / self.stress_n
        if not np.all(np.isfinite(list(out.values()))):
            raise RuntimeError(f"SevenNet fine-tuning diverged (errors {out})")
        return out


# --------------------------------------------------------------------------- energy refit
def refit_energy_shift(
    trainer: Any, graphs: Sequence[Any], frames: Sequence[Atoms], config: dict[str, Any]
) -> dict[str, float]:
    """Shift SevenNet's per-element reference energies to fit the labels by least squares.

    The residual ``(e_label - e_SevenNet) / n_atoms`` of each frame is fitted as
    ``Σ_el x_el δ_el`` (``x_el``: fraction of element ``el``;
    :func:`~pfd_ase.training.finetuning.fit_element_shifts`) and ``δ_el`` is added to the
    shift of that element in ``rescale_atomic_energy`` (each atom's energy is
    ``scale · x + shift``); for one element this is the mean residual per atom.

    Returns
    -------
    dict
        ``{element: δ (eV/atom)}``.
    """
    import torch
    from ase.data import chemical_symbols
    from torch_geometric.loader import DataLoader

    errors = _Errors(with_stress=False)
    trainer.run_one_epoch(DataLoader(list(graphs), batch_size=8), error_recorder=errors)
    e = np.array(errors.energy)
    shifts = fit_element_shifts([a.numbers for a in frames], e[:, 1] - e[:, 0])
    rescale = trainer.model.rescale_atomic_energy
    with torch.no_grad():
        if rescale.shift.numel() == 1:  # one shift for all elements
            if len(shifts) > 1:
                raise ValueError(
                    "this SevenNet model has one energy shift for all elements: it cannot "
                    "be refitted per element (pass refit_energy_bias=False)"
                )
            rescale.shift += next(iter(shifts.values()))
        else:
            type_map = config["_type_map"]
            for z, d in shifts.items():
                rescale.shift[type_map[z]] += d
    return {chemical_symbols[z]: d for z, d in shifts.items()}


# --------------------------------------------------------------------------- checkpoints
def _plain(value: Any) -> Any:
    """``value`` as tensors-free plain data (what ``torch.load(weights_only=True)`` reads)."""
    import torch

    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray | torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.device):
        return str(value)
    return value


def _state(
    trainer: Any,
    config: dict[str, Any],
    epoch: int,
    extra: dict[str, Any],
    with_optimizer: bool,
) -> dict[str, Any]:
    """A ``sevenn`` checkpoint dict of the trainer's model (plain data and tensors only)."""
    from sevenn.nn.scale import get_resolved_shift_scale

    config = dict(config)
    shift, scale = get_resolved_shift_scale(
        trainer.model.rescale_atomic_energy, config.get("_type_map")
    )
    config.update(shift=shift, scale=scale, version=sevennet_version())
    state = {
        "config": _plain(config),
        "model_state_dict": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
        "epoch": int(epoch),
        "time": time.strftime("%Y-%m-%d %H:%M"),
        "hash": uuid.uuid4().hex,
        "pfd_ase": extra,
    }
    if with_optimizer:
        state["optimizer_state_dict"] = trainer.optimizer.state_dict()
        state["scheduler_state_dict"] = trainer.scheduler.state_dict()
    return state


def _save(state: dict[str, Any], path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _epoch_states(epoch_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for p in epoch_dir.glob("epoch*.pth"):
        with contextlib.suppress(ValueError):
            found.append((int(p.stem[len("epoch") :]), p))
    return sorted(found)


# --------------------------------------------------------------------------- fine-tuning
def finetune_sevennet(
    train_frames: Sequence[Atoms],
    workdir: str | os.PathLike,
    valid_frames: Sequence[Atoms] | None = None,
    *,
    epochs: int = 20,
    learning_rate: float = 4e-3,
    batch_size: int = 4,
    base: str | os.PathLike = "7net-0",
    refit_energy_bias: bool = True,
    loss: str = "huber",
    energy_weight: float = 3.0,
    force_weight: float = 1.0,
    stress_weight: float = 0.01,
    valid_fraction: float = 0.1,
    min_valid_frames: int = 5,
    structure_weights: Mapping[str, int] | None = None,
    early_stopping: int | None = None,
    seed: int = 0,
    use_device: str | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Fine-tune SevenNet on labelled frames; return ``workdir/sevennet_finetuned.pth``.

    Parameters
    ----------
    train_frames
        Labelled frames (energy, forces; stress used when every frame has one).
    workdir
        Output folder: the checkpoint, ``pfd_train.json``, ``sevennet_train.log`` (the
        per-epoch lines) and ``epochs/`` (the last epoch's trainer state, for resuming,
        and ``best.pth``, the best epoch so far).
    valid_frames
        Frames to validate on after each epoch. ``None``: a seeded share
        ``valid_fraction`` of ``train_frames`` is held out
        (:func:`~pfd_ase.training.finetuning.split_validation`); ``[]``: no validation.
    epochs, learning_rate, batch_size
        Adam with a cosine decay to 1 % of ``learning_rate`` over the ``epochs`` (stepped
        once per epoch). Defaults from ``bench/sevennet_finetune.py``: on 16 SW-labelled Si
        frames of eight phases (CHGNet's benchmark frames), held-out force RMSE 0.237 eV/Å
        after 20 epochs at 4e-3 (SevenNet-0: 1.255; CHGNet fine-tuned: 0.579), 0.357 after
        10 epochs at 4e-3, 0.359 after 20 at 2e-3; 20 at 8e-3 0.216 and 40 at 4e-3 0.211
        (another seed of 20 at 4e-3: 0.274). 2.7 s per epoch on one core.
    base
        ``"7net-0"`` (SevenNet-0, in the ``sevenn`` wheel) or a SevenNet checkpoint file
        (e.g. the previous iteration's fine-tuned model).
    refit_energy_bias
        Least-squares refit of the per-element energy shift to the training labels before
        training (:func:`refit_energy_shift`). The shift and scale are not trained.
    loss
        ``"huber"`` (δ = 0.01, ``sevenn``'s fine-tuning preset and SevenNet-0's training:
        the errors of a base model far from the labels weigh linearly) or ``"mse"``. With
        ``"mse"`` the squared stress in kbar outweighs the forces unless ``stress_weight``
        is far smaller: in the benchmark (20 epochs at 4e-3) held-out force RMSE 1.13 eV/Å
        with 0.01, 0.266 with 1e-5 (Huber: 0.237).
    energy_weight, force_weight, stress_weight
        Loss weights of the energy per atom (eV/atom), forces (eV/Å) and stress (kbar,
        ``sevenn``'s unit; 0.01 as in its preset). Stress is a target only when every
        training and validation frame is periodic with a stress label. The energy weighs 3,
        not ``sevenn``'s 1: fine-tuned on the default silicon preset's first 24 GPAW frames
        (30 epochs, two seeds), held-out energy RMSE 7.5 / 7.6 meV/atom against 9.8 / 11.0,
        forces 0.075 / 0.073 against 0.071 / 0.072 eV/Å (weight 10: 7.2 meV/atom but 0.083
        eV/Å; 60 epochs at weight 1: 8.1 meV/atom, 0.069 eV/Å in twice the time).
    valid_fraction
        Share of ``train_frames`` held out for validation when ``valid_frames`` is
        ``None`` (``0``: none). The held-out frames are not trained on; they choose the
        epoch returned.
    min_valid_frames
        Hold out only when the share is at least this many frames; otherwise train on
        every frame and return the last epoch (the rule of ``finetune_chgnet``).
    structure_weights
        Each training frame of structure ``name`` (``info["pfd_structure"]``) enters the
        training ``structure_weights[name]`` times, after the validation split
        (:func:`pfd_ase.data.weighted`); ``None``: once.
    early_stopping
        Stop when the validation loss has not improved for this many epochs (``None``:
        train all ``epochs``). Needs validation frames.
    seed
        Seeds torch inside ``torch.random.fork_rng`` (the caller's torch RNG state is
        restored afterwards), each epoch's data order and the validation split.
    use_device
        Torch device (``None``: CUDA when available).
    threads
        Torch intra-op threads during training (restored afterwards; ``None``: unchanged).
    progress
        Print one line per epoch (errors, seconds per epoch, ETA) to stdout; the lines
        always go to ``sevennet_train.log``.

    Returns
    -------
    Path
        The fine-tuned checkpoint: with validation frames, the epoch of lowest validation
        loss (:func:`~pfd_ase.training.finetuning.valid_loss`; epoch 0 is the base model
        after the energy refit); without, the last epoch.

    Raises
    ------
    ImportError
        ``sevenn`` is not installed (the message says ``pip install sevenn``).
    ValueError
        Bad settings, unlabelled frames, an element SevenNet does not know, a base that is
        not a SevenNet model.
    RuntimeError
        Training diverged (NaN errors).

    Notes
    -----
    ``pfd_train.json`` records the settings, the validation split, the energy shifts,
    per-epoch train and validation MAEs (train: averaged over the epoch's batches while
    training) and validation loss, ``initial_valid_mae`` / ``initial_valid_loss``
    (epoch 0), ``best_epoch``, ``best_valid_loss`` and ``stopped_early``.

    Resumable: a finished run with the same settings and data is not repeated; an
    interrupted run continues from its last completed epoch (model, optimiser and
    scheduler states, best epoch so far); a run with other settings starts afresh in the
    same folder.
    """
    train_frames = list(train_frames)
    check_finetune_inputs(train_frames, valid_frames, epochs, batch_size, early_stopping)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")
    spec = resolve_model(base)
    if spec.kind != "sevennet":
        raise ValueError(f"base {os.fspath(base)!r} is not a SevenNet model ({spec.kind})")
    import_sevenn()
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

    settings = {
        "base": os.fspath(base),
        "epochs": int(epochs),
        "learning_rate": float(learning_rate),
        "batch_size": int(batch_size),
        "refit_energy_bias": bool(refit_energy_bias),
        "loss": loss,
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
    record = previous_record(workdir / RECORD_FILE, settings)
    if record.get("done") and final.exists():
        return final
    states = _epoch_states(epoch_dir) if record else []
    if not record:  # a fresh run: forget what an earlier run left
        for old in (*epoch_dir.glob("*.pth"), final):
            old.unlink(missing_ok=True)

    log = open(workdir / _LOG_FILE, "a")  # noqa: SIM115 - closed in finally
    try:
        out = Tee(sys.stdout, log) if progress else log
        device = sevennet_device(use_device)
        with torch_state(seed, threads, device), quiet_jit():
            return _run(
                settings,
                record,
                states[-1] if states else None,
                (train_frames, valid_frames),
                workdir,
                out,
                device,
            )
    finally:
        log.close()


def _trainer(model: Any, settings: dict[str, Any], with_stress: bool, device: str) -> Any:
    """``sevenn``'s trainer: its losses, Adam, a cosine decay stepped once per epoch."""
    import torch
    from sevenn.train.loss import ForceLoss, PerAtomEnergyLoss, StressLoss
    from sevenn.train.trainer import Trainer

    if settings["loss"] == "huber":
        criterion = torch.nn.HuberLoss(delta=0.01)
    else:
        criterion = torch.nn.MSELoss()
    weights = settings["loss_weights"]
    losses = [
        (PerAtomEnergyLoss(criterion=criterion), weights["e"]),
        (ForceLoss(criterion=criterion), weights["f"]),
    ]
    if with_stress:
        losses.append((StressLoss(criterion=criterion), weights["s"]))
    lr = settings["learning_rate"]
    return Trainer(
        model,
        losses,
        torch.optim.Adam,
        {"lr": lr},
        torch.optim.lr_scheduler.CosineAnnealingLR,
        {"T_max": settings["epochs"], "eta_min": 0.01 * lr},
        device=device,
    )


def _validate(trainer: Any, loader: Any, with_stress: bool) -> dict[str, float]:
    errors = _Errors(with_stress)
    trainer.run_one_epoch(loader, error_recorder=errors)
    return errors.mae()


def _run(
    settings: dict[str, Any],
    record: dict[str, Any],
    resume: tuple[int, Path] | None,
    frames: tuple[list[Atoms], list[Atoms]],
    workdir: Path,
    out: TextIO,
    device: str,
) -> Path:
    """The training run proper (inside :func:`~pfd_ase.training.finetuning.torch_state`)."""
    import shutil

    from torch_geometric.loader import DataLoader

    train_frames, valid_frames = frames
    epoch_dir = workdir / _EPOCH_DIR
    best_path = epoch_dir / _BEST
    final = workdir / CHECKPOINT_NAME
    record_path = workdir / RECORD_FILE
    epochs, weights = settings["epochs"], settings["loss_weights"]
    t_start = time.perf_counter()
    wall_before = float(record.get("wall_s", 0.0))

    state = None
    if resume is not None:  # continue from the last completed epoch
        state = read_sevennet_checkpoint(resume[1])  # weights only
        model, config = load_sevennet_model(resume[1], use_device="cpu")
    else:
        model, config = load_sevennet_model(settings["base"], use_device="cpu")
    with_stress = with_stress_labels(train_frames, valid_frames)
    train_data = frames_to_graphs(train_frames, config, with_stress, "train")
    valid_data = frames_to_graphs(valid_frames, config, with_stress, "valid")
    trainer = _trainer(model, settings, with_stress, device)
    batch = settings["batch_size"]
    valid_loader = DataLoader(valid_data, batch_size=batch) if valid_data else None

    def save_best(epoch: int, loss: float) -> None:
        _save(_state(trainer, config, epoch, {"best_epoch": epoch}, False), best_path)
        record["best_epoch"], record["best_valid_loss"] = epoch, loss

    if state is None:
        shifts = {}
        if settings["refit_energy_bias"]:
            shifts = refit_energy_shift(trainer, train_data, train_frames, config)
        record.clear()
        record.update(
            new_record(
                settings,
                versions=distribution_versions("sevenn", "torch", "e3nn", "ase", "pfd_ase"),
                base_version=config.get("version"),
                targets="efs" if with_stress else "ef",
                n_params=sum(p.numel() for p in model.parameters()),
                n_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                energy_shift_eV_per_atom=shifts,
                valid_split=frame_ids(valid_frames),
            )
        )
        start_epoch = 0
        if valid_loader is not None:  # epoch 0: the base model after the energy refit
            mae = _validate(trainer, valid_loader, with_stress)
            record["initial_valid_mae"] = mae
            record["initial_valid_loss"] = valid_loss(mae, weights)
            save_best(0, record["initial_valid_loss"])
    else:
        trainer.load_state_dicts(None, state["optimizer_state_dict"], state["scheduler_state_dict"])
        start_epoch = resume[0]
        record["history"] = record.get("history", [])[:start_epoch]
        if len(record["history"]) < start_epoch:  # killed between state and record
            row = dict(state["pfd_ase"]["row"], seconds=0.0)
            record["history"].append(row)
            record["epochs_done"] = start_epoch
            if valid_loader is not None and row["valid_loss"] < record["best_valid_loss"]:
                save_best(start_epoch, row["valid_loss"])
    write_json(record_path, record)

    for epoch in range(start_epoch, epochs):
        if valid_loader is not None and early_stop_due(record, settings["early_stopping"], epoch):
            break
        t0 = time.perf_counter()
        loader = DataLoader(
            train_data,
            batch_size=batch,
            shuffle=True,
            generator=epoch_generator(settings["seed"], epoch),
        )
        errors = _Errors(with_stress)
        trainer.run_one_epoch(loader, is_train=True, error_recorder=errors)
        trainer.scheduler_step()
        row: dict[str, Any] = {"epoch": epoch + 1, "train_mae": errors.mae(), "valid_mae": None}
        if valid_loader is not None:
            row["valid_mae"] = _validate(trainer, valid_loader, with_stress)
        row["valid_loss"] = (
            valid_loss(row["valid_mae"], weights) if valid_loader is not None else None
        )
        row["steps"] = (epoch + 1) * len(loader)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        _save(_state(trainer, config, epoch + 1, {"row": row}, True), _epoch_path(epoch_dir, epoch))
        for n, old in _epoch_states(epoch_dir):
            if n < epoch + 1:
                old.unlink(missing_ok=True)
        record["history"].append(row)
        record["epochs_done"] = epoch + 1
        if valid_loader is not None and row["valid_loss"] < record["best_valid_loss"]:
            save_best(epoch + 1, row["valid_loss"])
        record["wall_s"] = round(wall_before + time.perf_counter() - t_start, 3)
        write_json(record_path, record)
        print(epoch_line("SevenNet", record, row, epochs, start_epoch), file=out, flush=True)

    if valid_loader is not None:
        stopped = early_stop_line("SevenNet", record, settings["early_stopping"])
        if stopped:
            print(stopped, file=out, flush=True)
        with atomic_path(final) as tmp:
            shutil.copyfile(best_path, tmp)
    else:
        record["best_epoch"] = record["epochs_done"]
        extra = {"best_epoch": record["best_epoch"]}
        _save(_state(trainer, config, record["epochs_done"], extra, False), final)
    record.update(
        done=True,
        checkpoint=final.name,
        wall_s=round(wall_before + time.perf_counter() - t_start, 3),
    )
    write_json(record_path, record)
    return final


def _epoch_path(epoch_dir: Path, epoch: int) -> Path:
    """The trainer state after ``epoch + 1`` completed epochs."""
    return epoch_dir / f"epoch{epoch + 1:04d}.pth"
