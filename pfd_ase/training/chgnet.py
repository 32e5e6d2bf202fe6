"""Fine-tuning of the universal CHGNet (offline base model) with ``chgnet.trainer.Trainer``.

The pre-trained CHGNet ships inside the ``chgnet`` wheel, so this is the base model of
every recipe when no deepmd-kit DPA checkpoint is at hand: CHGNet is fine-tuned on the
system's labelled frames, then distilled into a deepmd-kit student.

:func:`finetune_chgnet` turns labelled ASE frames into CHGNet training data, refits the
elemental reference energies of CHGNet's composition model to the new labels by least
squares (the analogue of the energy-bias refit of DPA-2 eq. 6), freezes the lower layers
(CHGNet's fine-tuning recipe) and trains the rest. It writes ``chgnet_finetuned.pth.tar``
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
import hashlib
import io
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress

from pfd_ase._io import atomic_path, read_json, write_json
from pfd_ase.calculators.chgnet import (
    GPA_PER_EV_A3,
    atoms_to_structure,
    chgnet_version,
    load_chgnet_model,
)

__all__ = [
    "CHECKPOINT_NAME",
    "RECORD_FILE",
    "chgnet_targets",
    "default_freeze_layers",
    "finetune_chgnet",
    "frames_to_graphs",
    "refit_composition_energies",
]

RECORD_FILE = "pfd_train.json"
#: Name of the fine-tuned checkpoint (``*.pth.tar``: recognised by ``load_backend``).
CHECKPOINT_NAME = "chgnet_finetuned.pth.tar"
_EPOCH_DIR = "epochs"
_LOG_FILE = "chgnet_train.log"


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


def _data_digest(frames: Sequence[Atoms]) -> str:
    """Hash of structures and labels (bit-exact)."""
    from pfd_ase.data import frame_fingerprint

    h = hashlib.sha1()
    for atoms in frames:
        h.update(frame_fingerprint(atoms).encode())
        for key in ("energy", "forces", "stress"):
            value = atoms.calc.results.get(key) if atoms.calc is not None else None
            if value is not None:
                h.update(key.encode())
                h.update(np.ascontiguousarray(value, dtype=float).tobytes())
    return h.hexdigest()


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
    ``δ_el`` is added to the composition model's weight of that element; for one element
    this is the mean residual per atom. Returns ``{element: δ (eV/atom)}``.
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
    numbers = sorted({int(z) for g in graphs for z in g.atomic_number.tolist()})
    features = np.zeros((len(graphs), len(numbers)))
    for i, g in enumerate(graphs):
        counts = np.bincount(g.atomic_number.numpy(), minlength=max(numbers) + 1)[numbers]
        features[i] = counts / counts.sum() if model.is_intensive else counts
    delta = np.linalg.lstsq(features, residual, rcond=None)[0]
    with torch.no_grad():
        for z, d in zip(numbers, delta, strict=True):
            comp.fc.weight[0, z - 1] += float(d)
    return {chemical_symbols[z]: float(d) for z, d in zip(numbers, delta, strict=True)}


# --------------------------------------------------------------------------- helpers
class _Tee(io.TextIOBase):
    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


@contextlib.contextmanager
def _torch_state(seed: int, threads: int | None, device: str) -> Iterator[None]:
    """Seed torch inside a forked RNG and set the thread count; both restored on exit."""
    import torch

    devices = [device] if str(device).startswith("cuda") else []
    old_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if threads:
            torch.set_num_threads(int(threads))
        try:
            yield
        finally:
            torch.set_num_threads(old_threads)


def _epoch_generator(seed: int, epoch: int) -> Any:
    """A torch generator for the data order of one epoch (same order when resumed)."""
    import torch

    value = int(np.random.default_rng([seed, epoch]).integers(2**62))
    return torch.Generator().manual_seed(value)


def _latest_epoch_checkpoint(epoch_dir: Path) -> tuple[int, Path] | None:
    found = []
    for p in epoch_dir.glob("epoch*_*.pth.tar"):
        try:
            found.append((int(p.name[len("epoch") :].split("_")[0]), p))
        except ValueError:
            continue
    return max(found) if found else None


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"chgnet": chgnet_version()}
    for dist in ("torch", "pymatgen", "ase", "pfd_ase"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _fmt_mae(mae: dict[str, float]) -> str:
    units = {"e": "eV/atom", "f": "eV/Å", "s": "GPa"}
    return " ".join(f"{k} {v:.4g} {units.get(k, '')}".rstrip() for k, v in mae.items())


# --------------------------------------------------------------------------- fine-tuning
def finetune_chgnet(
    train_frames: Sequence[Atoms],
    workdir: str | os.PathLike,
    valid_frames: Sequence[Atoms] | None = None,
    *,
    epochs: int = 20,
    learning_rate: float = 1e-3,
    batch_size: int = 4,
    base: str | os.PathLike = "0.3.0",
    freeze_layers: Sequence[str] | None = None,
    refit_energy_bias: bool = True,
    energy_weight: float = 1.0,
    force_weight: float = 1.0,
    stress_weight: float = 0.1,
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
        own output) and ``epochs/`` (CHGNet's per-epoch trainer states, for resuming).
    valid_frames
        Frames to validate on after each epoch (none: no validation).
    epochs, learning_rate, batch_size
        Adam with CHGNet's cosine schedule (decays to 1 % of ``learning_rate``).
    base
        Pre-trained version (``"0.3.0"``, ``"chgnet"``, ``"CHGNet-0.3.0"``, …) or a
        CHGNet checkpoint file (e.g. the previous iteration's fine-tuned model).
    freeze_layers
        Parameter-name prefixes to freeze (``"atom_conv_layers.0"``, ``"bond_conv_layers"``,
        …). ``None``: CHGNet's recipe (:func:`default_freeze_layers`); ``()``: train all.
        The composition model (elemental reference energies) is never trained.
    refit_energy_bias
        Least-squares refit of the elemental reference energies to the training labels
        before training (:func:`refit_composition_energies`).
    energy_weight, force_weight, stress_weight
        Loss weights (MSE; stress in GPa). Stress is a target only when every training
        and validation frame is periodic with a stress label.
    seed
        Seeds torch inside ``torch.random.fork_rng`` (the caller's torch RNG state is
        restored afterwards) and each epoch's data order (a generator per epoch from
        ``np.random.default_rng([seed, epoch])``); no global seed is left behind.
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
        The fine-tuned checkpoint (weights of the last epoch).

    Notes
    -----
    Resumable: a finished run with the same settings and data is not repeated; an
    interrupted run continues from its last completed epoch (model, optimiser and
    scheduler states); a run with other settings starts afresh in the same folder.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    train_frames = list(train_frames)
    valid_frames = list(valid_frames or [])
    if not train_frames:
        raise ValueError("no training frames")
    for name, frames in (("train", train_frames), ("valid", valid_frames)):
        for i, atoms in enumerate(frames):
            results = getattr(atoms.calc, "results", {})
            if "energy" not in results or "forces" not in results:
                raise ValueError(f"{name} frame {i} is not labelled (energy and forces)")
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
        "seed": int(seed),
        "n_train": len(train_frames),
        "n_valid": len(valid_frames),
        "train_digest": _data_digest(train_frames),
        "valid_digest": _data_digest(valid_frames),
    }
    record: dict[str, Any] = {}
    if record_path.exists():
        record = read_json(record_path)
        if record.get("settings") == settings and record.get("done") and final.exists():
            return final
        if record.get("settings") != settings:
            record = {}
    resume = _latest_epoch_checkpoint(epoch_dir) if record else None
    if not record:  # a fresh run: forget what an earlier run left
        for old in (*epoch_dir.glob("*.pth.tar"), final):
            old.unlink(missing_ok=True)

    log = open(workdir / _LOG_FILE, "a")  # noqa: SIM115 - closed in finally
    try:
        out = _Tee(sys.stdout, log) if progress else log
        device = _device_name(use_device)
        with _torch_state(seed, threads, device):
            return _run(
                settings, record, resume, (train_frames, valid_frames), workdir, out, log, device
            )
    finally:
        log.close()


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
    """The training run proper (inside :func:`_torch_state`)."""
    import torch
    from chgnet.data.dataset import collate_graphs
    from chgnet.model import CHGNet
    from chgnet.trainer import Trainer
    from torch.utils.data import DataLoader

    train_frames, valid_frames = frames
    epoch_dir = workdir / _EPOCH_DIR
    final = workdir / CHECKPOINT_NAME
    record_path = workdir / RECORD_FILE
    epochs = settings["epochs"]
    t_start = time.perf_counter()
    wall_before = float(record.get("wall_s", 0.0))

    state = None
    if resume is not None:  # continue from the last completed epoch
        state = torch.load(resume[1], map_location="cpu", weights_only=False)
        with contextlib.redirect_stdout(log):
            model = CHGNet.from_dict(state["model"])
    else:
        model = load_chgnet_model(settings["base"], use_device="cpu")

    with_stress = all(a.pbc.all() and "stress" in a.calc.results for a in train_frames) and all(
        a.pbc.all() and "stress" in a.calc.results for a in valid_frames
    )
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
        record = {
            "settings": settings,
            "versions": _versions(),
            "base_version": model.version,
            "targets": targets,
            "frozen": list(freeze),
            "n_params": n_params,
            "n_trainable": n_trainable,
            "energy_shift_eV_per_atom": shifts,
            "history": [],
            "epochs_done": 0,
            "done": False,
            "wall_s": 0.0,
        }
        write_json(record_path, record)

    # CHGNet's trainer prints: into the log file
    with contextlib.redirect_stdout(log):
        w = settings["loss_weights"]
        trainer = Trainer(
            model=model,
            targets=targets,
            energy_loss_ratio=w["e"],
            force_loss_ratio=w["f"],
            stress_loss_ratio=w["s"],
            optimizer="Adam",
            scheduler="CosLR",
            criterion="MSE",
            epochs=epochs,
            learning_rate=settings["learning_rate"],
            print_freq=max(1, len(train_data) // settings["batch_size"] // 4),
            use_device=device,
        )
        start_epoch = 0
        if state is not None:
            trainer.optimizer.load_state_dict(state["optimizer"])
            trainer.scheduler.load_state_dict(state["scheduler"])
            trainer.training_history = state["training_history"]
            start_epoch = resume[0] + 1
            record["history"] = record.get("history", [])[:start_epoch]
        valid_loader = (
            DataLoader(valid_data, batch_size=settings["batch_size"], collate_fn=collate_graphs)
            if valid_data
            else []
        )
        n_batches = -(-len(train_data) // settings["batch_size"])
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            train_loader = DataLoader(
                train_data,
                batch_size=settings["batch_size"],
                shuffle=True,
                collate_fn=collate_graphs,
                generator=_epoch_generator(settings["seed"], epoch),
            )
            trainer.starting_epoch, trainer.epochs = epoch, epoch + 1
            trainer.train(train_loader, valid_loader, save_dir=str(epoch_dir))
            hist = trainer.training_history
            if len(hist["e"]["train"]) != epoch + 1:  # CHGNet stops on NaN without a word
                raise RuntimeError(f"CHGNet fine-tuning diverged (NaN) at epoch {epoch + 1}")
            row = {
                "epoch": epoch + 1,
                "steps": (epoch + 1) * n_batches,
                "train_mae": {k: hist[k]["train"][-1] for k in targets},
                "valid_mae": {k: hist[k]["val"][-1] for k in targets} if valid_data else None,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            record["history"].append(row)
            record["epochs_done"] = epoch + 1
            record["wall_s"] = round(wall_before + time.perf_counter() - t_start, 3)
            write_json(record_path, record)
            per_epoch = np.mean([r["seconds"] for r in record["history"][start_epoch:]])
            line = (
                f"CHGNet fine-tune epoch {epoch + 1}/{epochs} (step {row['steps']}): "
                f"train MAE {_fmt_mae(row['train_mae'])}"
                + (f" | valid MAE {_fmt_mae(row['valid_mae'])}" if valid_data else "")
                + f" | {row['seconds']:.1f} s/epoch, ETA {per_epoch * (epochs - epoch - 1):.0f} s"
            )
            print(line, file=out, flush=True)
        with atomic_path(final) as tmp:
            trainer.save(filename=str(tmp))
    record.update(
        done=True,
        checkpoint=final.name,
        wall_s=round(wall_before + time.perf_counter() - t_start, 3),
    )
    write_json(record_path, record)
    return final


def _device_name(use_device: str | None) -> str:
    from chgnet.utils import determine_device

    return str(determine_device(use_device=use_device))
