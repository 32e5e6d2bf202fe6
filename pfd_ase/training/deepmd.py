"""deepmd-kit (PyTorch back-end) training: input templates, train, freeze, compress.

Training and compression run in a subprocess (``python -m deepmd --pt ...``) inside their
own work directory: in-process training writes into the current directory, keeps torch
thread settings and cannot be stopped cleanly. The exact command line, the deepmd-kit
version and the wall time are recorded in ``pfd_train.json``. Freezing (loading a
checkpoint and scripting it to TorchScript, seconds) runs in this process: a subprocess
would spend 10-15 s on 2 cores importing deepmd-kit for it.

Hyper-parameters follow the papers: fine-tuning lr 1e-3 → 3.51e-8 decaying every 200
steps (PFD supplement §II.C, 20 000 steps); the student (``se_atten_v2``, ``attn_layer = 0``,
rcut 6.5 Å) lr 0.01 → 1e-8 decaying every 2000 steps, batch size 1 (supplement §II.C,
1 000 000 steps); multi-task pre-training lr 2e-4 → 3e-8 decaying every 5000 steps, batch
size 8 (DPA-2 paper, Supplementary §S3 and §S9). Runs shorter than ten decay periods decay
faster (:func:`learning_rate_section`). The loss weighs energies and forces, and virials too
when the training data carry them (:func:`default_loss`).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pfd_ase import processes
from pfd_ase._io import read_json, write_json
from pfd_ase.data import has_virial_labels
from pfd_ase.threads import compute_threads

RECORD_FILE = "pfd_train.json"

# --------------------------------------------------------------------------- templates
#: Repformer update scheme shared by every DPA-2 template (deepmd-kit's example layout); the
#: g1 self-attention and the g2 g1×g1 product are set by :func:`dpa2_descriptor`.
_REPFORMER_UPDATES: dict[str, Any] = {
    "update_h2": False,
    "update_g1_has_conv": True,
    "update_g1_has_grrg": True,
    "update_g1_has_drrd": True,
    "update_g2_has_attn": True,
    "update_style": "res_residual",
    "update_residual": 0.01,
    "update_residual_init": "norm",
    "attn2_has_gate": True,
    "use_sqrt_nnei": True,
    "g1_out_conv": True,
    "g1_out_mlp": True,
}


def dpa2_descriptor(
    nlayers: int = 2,
    g1_dim: int = 32,
    g2_dim: int = 16,
    repinit_nsel: int = 60,
    repinit_neuron: Sequence[int] = (8, 16, 32),
    repinit_axis_neuron: int = 4,
    repformer_nsel: int = 40,
    attn_heads: int = 2,
    update_g1_has_attn: bool = False,
    update_g2_has_g1g1: bool = False,
) -> dict[str, Any]:
    """A DPA-2 descriptor: repinit rcut 6 Å, ``nlayers`` repformer layers with rcut 4 Å.

    ``update_g1_has_attn`` adds the local self-attention to the single-atom update (DPA-2
    paper eq. 24, ``loc_attn``) and ``update_g2_has_g1g1`` the product
    ``w_ij linear(f_i ⊙ f_j)`` to the pair update (eq. 29). The paper has both (its
    ablation, Supplementary Table S5: removing them raised the pre-training RMSEs by
    14.6 meV/atom, 58.4 meV/Å and 4.6 meV/atom, 21.7 meV/Å); deepmd-kit's example inputs
    (``examples/water/dpa2``) turn both off, and so do the defaults here, for the small
    test models. :data:`DPA2_PRODUCTION` turns them on.
    """
    return {
        "type": "dpa2",
        "repinit": {
            "tebd_dim": 8,
            "rcut": 6.0,
            "rcut_smth": 0.5,
            "nsel": repinit_nsel,
            "neuron": list(repinit_neuron),
            "axis_neuron": repinit_axis_neuron,
            "activation_function": "tanh",
            "tebd_input_mode": "strip",
        },
        "repformer": {
            "rcut": 4.0,
            "rcut_smth": 3.5,
            "nsel": repformer_nsel,
            "nlayers": nlayers,
            "g1_dim": g1_dim,
            "g2_dim": g2_dim,
            "attn2_hidden": g2_dim,
            "attn2_nhead": attn_heads,
            "attn1_hidden": g1_dim,
            "attn1_nhead": attn_heads,
            "axis_neuron": 4,
            **_REPFORMER_UPDATES,
            "update_g1_has_attn": update_g1_has_attn,
            "update_g2_has_g1g1": update_g2_has_g1g1,
        },
        "add_tebd_to_repinit_out": False,
    }


#: A small two-layer DPA-2 descriptor for tests and demos (about 30-50k parameters per branch),
#: without the g1 self-attention and g2 g1×g1 product (fast; see :func:`dpa2_descriptor`).
DPA2_TINY: dict[str, Any] = dpa2_descriptor()

#: DPA-2 in the paper's layout (DPA-2 paper §4.2.3 eqs. 24 and 29, Supplementary §S9: repinit
#: nsel 120 with a 25/50/100 embedding and axis 12, repformers with g1 128 / g2 32, attention
#: hidden sizes 128 / 32, 4 heads, g1 self-attention and g2 g1×g1 product on) with the six
#: repformer layers and the 6 Å repinit cutoff of the PFD supplement's base model (§II.C; the
#: DPA-2 paper has 12 layers and 9 Å: ``dpa2_descriptor(nlayers=12, ...)``).
DPA2_PRODUCTION: dict[str, Any] = dpa2_descriptor(
    nlayers=6,
    g1_dim=128,
    g2_dim=32,
    repinit_nsel=120,
    repinit_neuron=(25, 50, 100),
    repinit_axis_neuron=12,
    attn_heads=4,
    update_g1_has_attn=True,
    update_g2_has_g1g1=True,
)
FITTING_PRODUCTION: dict[str, Any] = {"neuron": [240, 240, 240], "resnet_dt": True}

#: The PFD student (supplement §II.C): se_atten_v2 without attention layers, rcut 6.5 Å.
#: ``sel`` 100: close-packed Si (FCC, HCP) has 78 neighbours within 6.5 Å at zero pressure,
#: more in MD at 1 GPa; deepmd-kit drops the farthest beyond ``sel``.
STUDENT_DESCRIPTOR: dict[str, Any] = {
    "type": "se_atten_v2",
    "rcut": 6.5,
    "rcut_smth": 0.5,
    "sel": 100,
    "neuron": [25, 50, 100],
    "axis_neuron": 16,
    "attn_layer": 0,
    "tebd_dim": 8,
    "type_one_side": True,
}
STUDENT_FITTING: dict[str, Any] = {"neuron": [240, 240, 240], "resnet_dt": True}

#: Fine-tuning (PFD supplement §II.C): 1e-3 → 3.51e-8 decaying every 200 steps, 20 000 steps.
FINETUNE_LR = {"type": "exp", "start_lr": 1e-3, "stop_lr": 3.51e-8, "decay_steps": 200}
#: The student (PFD supplement §II.C): 0.01 → 1e-8 decaying every 2000 steps, 1 000 000 steps.
STUDENT_LR = {"type": "exp", "start_lr": 1e-2, "stop_lr": 1e-8, "decay_steps": 2000}
#: Multi-task pre-training (DPA-2 paper, Supplementary §S9): 2e-4 → 3e-8 decaying every 5000
#: steps, over 1 000 000 steps.
PRETRAIN_LR = {"type": "exp", "start_lr": 2e-4, "stop_lr": 3e-8, "decay_steps": 5000}
#: Frames per step of multi-task pre-training (DPA-2 paper, Supplementary §S3, Table S3).
PRETRAIN_BATCH_SIZE = 8
#: A default schedule decays at least this many times in a run (see learning_rate_section).
MIN_DECAYS = 10
#: Energy and force loss (deepmd-kit's ``ener`` loss), without a virial term.
ENERGY_LOSS = {
    "type": "ener",
    "start_pref_e": 0.02,
    "limit_pref_e": 1.0,
    "start_pref_f": 1000.0,
    "limit_pref_f": 1.0,
}
#: Virial prefactors added to :data:`ENERGY_LOSS` when the training systems carry virial
#: labels: DP-GEN's usual 0.02 -> 1 ramp (the PFD supplement and the DPA-2 paper give none).
#: deepmd-kit weighs the virial error as ``pref_v |Δvirial|² / N``, extensive: in the quick SW
#: silicon recipe (4-8-atom cells at 2-8 GPa, 300 fine-tuning steps) it swamped the forces
#: (teacher validation force RMSE 0.24 -> 3.2 eV/Å with a 0.1 limit, PFD Γ phonon 17.5 ->
#: 11.2 THz), while a constant 0.02 left stresses unlearnt; pre-training with it made the
#: later quick fine-tunings unstable too. The PFD stages (``pretrain``, ``finetune``,
#: ``train_student``) and the workflow therefore fit stresses only when asked
#: (``virial=True``, ``finetune.virial`` / ``distill.virial``).
VIRIAL_PREFS = {"start_pref_v": 0.02, "limit_pref_v": 1.0}


def default_loss(virial: bool) -> dict[str, Any]:
    """The default ``loss`` section: :data:`ENERGY_LOSS`, plus :data:`VIRIAL_PREFS` if ``virial``.

    Parameters
    ----------
    virial
        Whether the training data carry virial labels (stress of periodic frames).

    Returns
    -------
    dict
        A new dict, safe to modify.
    """
    loss = dict(ENERGY_LOSS)
    if virial:
        loss.update(VIRIAL_PREFS)
    return loss


def energy_model(
    type_map: Sequence[str],
    descriptor: Mapping[str, Any] | None = None,
    fitting_net: Mapping[str, Any] | None = None,
    seed: int = 1,
) -> dict[str, Any]:
    """A deepmd-kit ``model`` section (default descriptor: :data:`DPA2_TINY`)."""
    desc = copy.deepcopy(dict(descriptor or DPA2_TINY))
    fit = copy.deepcopy(dict(fitting_net or {"neuron": [32, 32, 32], "resnet_dt": True}))
    desc.setdefault("seed", seed)
    fit.setdefault("seed", seed)
    return {"type_map": list(type_map), "descriptor": desc, "fitting_net": fit}


def learning_rate_section(
    learning_rate: Mapping[str, Any] | None,
    steps: int,
    default: Mapping[str, Any] = FINETUNE_LR,
) -> dict[str, Any]:
    """The ``learning_rate`` section of a run of ``steps`` steps (a new dict).

    deepmd-kit's ``exp`` schedule is a staircase: ``lr(t) = start_lr * r ** (t //
    decay_steps)`` with ``r = (stop_lr / start_lr) ** (decay_steps / numb_steps)``
    (``deepmd/dpmodel/utils/learning_rate.py``, 3.2), so the last step runs at ``start_lr *
    r ** ((numb_steps - 1) // decay_steps)``: a run of fewer than a few periods ends far above
    ``stop_lr`` (the supplement's 200-step period in a 400-step fine-tuning ends at 5.9e-6
    for a stop_lr of 3.51e-8), and one no longer than a period never decays (deepmd-kit then
    silently picks a period of its own). Hence:

    - ``None``: ``default`` (the paper's schedule), its period shortened to ``steps // 10``
      (:data:`MIN_DECAYS`, at least 1) in runs shorter than ten periods, so that the run
      ends within ``(start_lr / stop_lr) ** 0.1`` of ``stop_lr`` (×2.8 for fine-tuning, ×4
      for the student, ×2.4 for pre-training). The papers' runs (20 000 fine-tuning steps,
      1 000 000 student and pre-training steps) keep the papers' periods.
    - an ``exp`` section without ``decay_steps`` (and without ``decay_rate``): the same, with
      ``default``'s period.
    - an ``exp`` section whose ``decay_steps`` is ``>= steps`` (it would never decay, without
      ``decay_rate``): the period becomes ``steps // 10`` (at least 1).
    - anything else is used as given (a copy).
    """
    lr = dict(learning_rate if learning_rate is not None else default)
    if lr.get("type", "exp") != "exp" or lr.get("decay_rate") is not None:
        return lr
    short = max(1, int(steps) // MIN_DECAYS)
    if learning_rate is None or "decay_steps" not in lr:
        lr["decay_steps"] = min(int(default.get("decay_steps", short)), short)
    elif lr["decay_steps"] >= steps:
        lr["decay_steps"] = short
    return lr


def training_input(
    model: Mapping[str, Any],
    train_systems: Sequence[str | os.PathLike],
    valid_systems: Sequence[str | os.PathLike] | None = None,
    steps: int = 1000,
    learning_rate: Mapping[str, Any] | None = None,
    loss: Mapping[str, Any] | None = None,
    batch_size: int | str = "auto",
    seed: int = 1,
    disp_freq: int | None = None,
    save_freq: int | None = None,
) -> dict[str, Any]:
    """A complete single-task deepmd-kit input (dict ready for ``input.json``).

    Parameters
    ----------
    model
        The ``model`` section (see :func:`energy_model`).
    train_systems, valid_systems
        deepmd-kit npy systems (see :func:`pfd_ase.data.to_deepmd`).
    steps
        Number of training steps (``numb_steps``).
    learning_rate
        The ``learning_rate`` section (default :data:`FINETUNE_LR`), fitted to ``steps`` by
        :func:`learning_rate_section`.
    loss
        The ``loss`` section, used as given. By default :func:`default_loss`: energy and
        forces, plus the virial (:data:`VIRIAL_PREFS`) when any training system holds
        virial labels (:func:`pfd_ase.data.has_virial_labels`).
    batch_size, seed, disp_freq, save_freq
        deepmd-kit's ``training`` settings (frequencies default to about a tenth and a
        quarter of ``steps``, at most 100 and 1000).

    Returns
    -------
    dict
        The input, ready for :func:`train`.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not train_systems:
        raise ValueError("no training systems given")
    lr = learning_rate_section(learning_rate, steps, FINETUNE_LR)
    if loss is None:
        loss = default_loss(any(has_virial_labels(s) for s in train_systems))
    else:
        loss = copy.deepcopy(dict(loss))
    training: dict[str, Any] = {
        "training_data": {
            "systems": [str(Path(s).resolve()) for s in train_systems],
            "batch_size": batch_size,
        },
        "numb_steps": int(steps),
        "seed": seed,
        "disp_file": "lcurve.out",
        "disp_freq": disp_freq or max(1, min(100, steps // 10)),
        "save_freq": save_freq or max(1, min(1000, steps // 4)),
    }
    if valid_systems:
        training["validation_data"] = {
            "systems": [str(Path(s).resolve()) for s in valid_systems],
            "batch_size": 1,
            "numb_btch": 1,
        }
    return {
        "model": copy.deepcopy(dict(model)),
        "learning_rate": lr,
        "loss": loss,
        "training": training,
    }


def multitask_input(
    type_map: Sequence[str],
    branches: Mapping[str, Mapping[str, Any]],
    descriptor: Mapping[str, Any] | None = None,
    steps: int = 1000,
    learning_rate: Mapping[str, Any] | None = None,
    seed: int = 1,
    batch_size: int | str = PRETRAIN_BATCH_SIZE,
) -> dict[str, Any]:
    """Input for multi-task pre-training (DPA-2 §4.4): shared descriptor, one head per dataset.

    Parameters
    ----------
    type_map
        All elements of all datasets (``type_map_all``).
    branches
        ``{name: {"train": [systems], "valid": [systems] (optional), "weight": float
        (sampling weight, default 1), "fitting_net": {...} (optional)}}``.
    descriptor
        Shared descriptor (default :data:`DPA2_TINY`).
    learning_rate
        The ``learning_rate`` section; default :data:`PRETRAIN_LR` (DPA-2 paper §S9: 2e-4 →
        3e-8 decaying every 5000 steps), fitted to ``steps`` by
        :func:`learning_rate_section`.
    batch_size
        Frames of each training batch, in every branch (default 8, the DPA-2 paper's total
        batch of its multi-task pre-training, §S3); ``"auto"`` lets deepmd-kit choose.
    """
    if len(branches) < 1:
        raise ValueError("multi-task training needs at least one branch")
    learning_rate = learning_rate_section(learning_rate, steps, PRETRAIN_LR)
    desc = copy.deepcopy(dict(descriptor or DPA2_TINY))
    desc.setdefault("seed", seed)
    model_dict, loss_dict, data_dict, prob = {}, {}, {}, {}
    for name, spec in branches.items():
        unknown = set(spec) - {"train", "valid", "weight", "fitting_net"}
        if unknown or "train" not in spec:
            raise ValueError(f"branch {name!r}: needs 'train', unknown keys {sorted(unknown)}")
        single = training_input(
            {},
            spec["train"],
            spec.get("valid"),
            steps=steps,
            learning_rate=learning_rate,
            batch_size=batch_size,
        )
        fit = dict(spec.get("fitting_net") or {"neuron": [32, 32, 32], "resnet_dt": True})
        fit.setdefault("seed", seed)
        model_dict[name] = {
            "type_map": "type_map_all",
            "descriptor": "shared_descriptor",
            "fitting_net": fit,
        }
        loss_dict[name] = single["loss"]
        data = {"training_data": single["training"]["training_data"]}
        if "validation_data" in single["training"]:
            data["validation_data"] = single["training"]["validation_data"]
        data_dict[name] = data
        prob[name] = float(spec.get("weight", 1.0))
    ref = training_input(
        {}, ["."], steps=steps, learning_rate=learning_rate, loss=ENERGY_LOSS, seed=seed
    )
    training = {k: v for k, v in ref["training"].items() if k != "training_data"}
    training.update(model_prob=prob, data_dict=data_dict)
    return {
        "model": {
            "shared_dict": {"type_map_all": list(type_map), "shared_descriptor": desc},
            "model_dict": model_dict,
        },
        "learning_rate": ref["learning_rate"],
        "loss_dict": loss_dict,
        "training": training,
    }


def student_input(
    type_map: Sequence[str],
    train_systems: Sequence[str | os.PathLike],
    valid_systems: Sequence[str | os.PathLike] | None = None,
    steps: int = 1000,
    seed: int = 1,
    learning_rate: Mapping[str, Any] | None = None,
    batch_size: int | str = 1,
    **overrides: Any,
) -> dict[str, Any]:
    """Input for the distilled student: se_atten_v2 (attn_layer 0), batch 1 (the paper's).

    ``learning_rate`` defaults to :data:`STUDENT_LR` (PFD supplement §II.C: 0.01 → 1e-8
    decaying every 2000 steps), fitted to ``steps`` by :func:`learning_rate_section` (runs
    shorter than 20 000 steps decay every ``steps // 10``).
    """
    model = energy_model(type_map, STUDENT_DESCRIPTOR, STUDENT_FITTING, seed=seed)
    for key, value in overrides.pop("descriptor", {}).items():
        model["descriptor"][key] = value
    return training_input(
        model,
        train_systems,
        valid_systems,
        steps=steps,
        learning_rate=learning_rate_section(learning_rate, steps, STUDENT_LR),
        batch_size=batch_size,
        seed=seed,
        **overrides,
    )


# --------------------------------------------------------------------------- running dp
def dp_env(threads: int | None = None) -> dict[str, str]:
    """Environment for a deepmd-kit subprocess: ``threads`` threads (default
    :func:`pfd_ase.threads.compute_threads`), no data-loader workers."""
    env = dict(os.environ)
    n = str(threads or compute_threads())
    env.update(
        OMP_NUM_THREADS=n,
        DP_INTRA_OP_PARALLELISM_THREADS=n,
        DP_INTER_OP_PARALLELISM_THREADS="1",
        NUM_WORKERS="0",
    )
    return env


def run_dp(
    args: Sequence[str],
    workdir: str | os.PathLike,
    threads: int | None = None,
    log_name: str = "dp.log",
    progress: Callable[[], object] | None = None,
    poll_interval: float = 0.5,
) -> subprocess.CompletedProcess:
    """Run ``python -m deepmd --pt ARGS`` in ``workdir``; raise with the log tail on failure.

    Blocks until the subprocess ends. With ``progress``, that callable is called every
    ``poll_interval`` seconds while deepmd-kit runs, and once more after it ends (whether it
    succeeded or not). If the caller is interrupted (e.g. ``KeyboardInterrupt``) the
    subprocess is killed before the exception propagates; if this process is killed, the
    subprocess dies with it (:func:`pfd_ase.processes.run`).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "deepmd", "--pt", *map(str, args)]
    with open(workdir / log_name, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = processes.run(
            cmd,
            cwd=workdir,
            env=dp_env(threads),
            stdout=log,
            stderr=subprocess.STDOUT,
            progress=progress,
            poll_interval=poll_interval,
        )
    if proc.returncode != 0:
        tail = "\n".join((workdir / log_name).read_text().splitlines()[-25:])
        raise RuntimeError(f"deepmd-kit failed ({' '.join(cmd[3:])}) in {workdir}:\n{tail}")
    return proc


class LcurveProgress:
    """A tqdm bar over a deepmd-kit run, fed by the rows appended to ``lcurve.out``.

    Call the object to read new complete rows (deepmd-kit writes one every ``disp_freq``
    steps); the bar shows the step, ``numb_steps``, the latest ``rmse_e_trn`` and
    ``rmse_f_trn`` (one pair per branch in multi-task runs) and tqdm's ETA. Only rows
    written after construction count, so the rows of an earlier, interrupted run that a
    restart appends to are skipped; ``initial`` is the step the run starts from.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        total: int,
        initial: int = 0,
        desc: str = "deepmd train",
        file: IO[str] | None = None,
        disable: bool = False,
    ) -> None:
        from tqdm.auto import tqdm

        self.path = Path(path)
        self._offset = self.path.stat().st_size if self.path.exists() else 0
        self._partial = ""
        self._header: list[str] | None = None
        self.step = initial
        self.values: dict[str, float] = {}
        self.bar = tqdm(
            total=total,
            initial=min(initial, total),
            desc=desc,
            unit="step",
            file=file,
            disable=disable,
            dynamic_ncols=True,
        )

    def __call__(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                if fh.seek(0, os.SEEK_END) < self._offset:  # rewritten: start over
                    self._offset, self._partial = 0, ""
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        text = self._partial + chunk.decode(errors="replace")
        *lines, self._partial = text.split("\n")  # keep an incomplete last line
        row = None
        for line in lines:
            words = line.lstrip("#").split()
            if line.startswith("#"):
                if words and words[0] == "step":
                    self._header = words
            elif words and self._header is not None:
                row = dict(zip(self._header, words, strict=False))
        if row is None:
            return
        try:
            step = int(float(row["step"]))
            values = {
                k: float(v) for k, v in row.items() if k.startswith(("rmse_e_trn", "rmse_f_trn"))
            }
        except (KeyError, ValueError):
            return
        self.values = values
        if values:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)
        if step > self.step:
            self.bar.update(min(step, self.bar.total) - self.bar.n)
            self.step = step
        else:
            self.bar.refresh()

    def close(self, finished: bool = False) -> None:
        """Read the last rows and close the bar; ``finished``: the run did all its steps.

        (deepmd-kit writes a row every ``disp_freq`` steps, not necessarily at the last.)
        """
        self()
        if finished and self.bar.total is not None and self.bar.n < self.bar.total:
            self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()


def deepmd_version() -> str:
    """Installed deepmd-kit version."""
    from importlib.metadata import version

    return version("deepmd-kit")


def _checkpoint_step(path: Path) -> int:
    return int(path.stem.split("-")[-1].split(".")[0])


def _complete(path: Path) -> bool:
    """Whether a ``torch.save`` checkpoint was written to the end (its zip directory reads)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def _latest_checkpoint(workdir: Path) -> Path | None:
    """Newest complete ``model.ckpt-<step>.pt`` in ``workdir``, or None.

    A checkpoint cut short (the run was killed while deepmd-kit wrote it) cannot be
    restarted from: it is renamed ``*.pt.partial`` and the one before it is used.
    """
    ckpts = sorted(workdir.glob("model.ckpt-*.pt"), key=_checkpoint_step)
    while ckpts:
        last = ckpts.pop()
        if _complete(last):
            return last
        last.rename(last.with_name(last.name + ".partial"))
    return None


def train(
    config: Mapping[str, Any],
    workdir: str | os.PathLike,
    finetune: str | os.PathLike | None = None,
    model_branch: str | None = None,
    init_model: str | os.PathLike | None = None,
    use_pretrain_script: bool = False,
    threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Train with deepmd-kit in ``workdir``; return the final checkpoint ``model.ckpt.pt``.

    Resumable: a finished run (recorded in ``pfd_train.json`` with the same input) is
    not repeated, and an interrupted one restarts from its last checkpoint.

    Parameters
    ----------
    config
        The deepmd-kit input (see :func:`training_input`).
    finetune
        Pre-trained checkpoint to fine-tune (``--finetune``).
    model_branch
        Branch of a multi-task ``finetune`` model to reuse; ``"RANDOM"`` or ``None`` gives
        a freshly initialised fitting net. The energy bias is refitted to the new data.
    init_model
        Checkpoint to initialise from (``--init-model``), e.g. the previous iteration's.
    use_pretrain_script
        Take descriptor and fitting settings from the ``finetune`` checkpoint.
    progress
        Show a tqdm progress bar (on stderr) while deepmd-kit trains: steps done out of
        ``numb_steps``, the latest training RMSEs from ``lcurve.out`` and the ETA. It
        advances every ``disp_freq`` steps. ``False`` prints nothing.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(config))
    record_path = workdir / RECORD_FILE
    final = workdir / "model.ckpt.pt"
    if record_path.exists():
        record = read_json(record_path)
        if record.get("config") == config and record.get("done") and final.exists():
            return final
    args: list[str] = ["train", "input.json"]
    last = _latest_checkpoint(workdir)
    start = 0
    given = config
    if last is not None and use_pretrain_script:
        # the model section came from the pre-trained checkpoint (--use-pretrain-script),
        # which a restart does not read: take it from deepmd-kit's record of the run
        out_json = workdir / "out.json"
        if out_json.exists():
            given = {**config, "model": read_json(out_json)["model"]}
        else:  # killed before deepmd-kit wrote it: fine-tune from the start again
            last = None
    write_json(workdir / "input.json", given)
    if last is not None:
        args += ["--restart", last.name]
        start = _checkpoint_step(last)
    elif finetune is not None:
        args += ["--finetune", str(Path(finetune).resolve())]
        if model_branch is not None:
            args += ["--model-branch", model_branch]
        if use_pretrain_script:
            args.append("--use-pretrain-script")
    elif init_model is not None:
        args += ["--init-model", str(Path(init_model).resolve())]
    record = {
        "command": [sys.executable, "-m", "deepmd", "--pt", *args],
        "deepmd_version": deepmd_version(),
        "config": config,
        "finetune": str(finetune) if finetune else None,
        "model_branch": model_branch,
        "done": False,
    }
    write_json(record_path, record)
    t0 = time.perf_counter()
    if progress:
        lcurve = workdir / config["training"].get("disp_file", "lcurve.out")
        if last is None:
            lcurve.unlink(missing_ok=True)  # a fresh run rewrites it; skip stale rows
        bar = LcurveProgress(
            lcurve,
            total=int(config["training"]["numb_steps"]),
            initial=start,
            desc=f"deepmd train {workdir.name}",
        )
        finished = False
        try:
            run_dp(args, workdir, threads=threads, progress=bar)
            finished = True
        finally:
            bar.close(finished)
    else:
        run_dp(args, workdir, threads=threads)
    record.update(done=True, wall_s=round(time.perf_counter() - t0, 3))
    write_json(record_path, record)
    if not final.exists():
        last = _latest_checkpoint(workdir)
        if last is None:
            raise RuntimeError(f"deepmd-kit wrote no checkpoint in {workdir}")
        final = last
    return final


def freeze(
    workdir: str | os.PathLike,
    output: str | os.PathLike = "frozen_model.pth",
    head: str | None = None,
) -> Path:
    """Freeze a training folder's checkpoint to TorchScript ``.pth`` (``head`` for multi-task).

    Runs deepmd-kit's own freeze (``dp --pt freeze``) in this process on the checkpoint that
    the folder's ``checkpoint`` file names, and appends what it did to ``dp.log``. The model
    is written under a temporary name that is renamed to ``output`` once complete
    (:func:`_partial`), so a run killed while it writes never leaves a truncated ``output``
    that a rerun would take for a frozen model. Raises ``RuntimeError`` (with deepmd-kit's
    error as its cause) when the checkpoint cannot be frozen.
    """
    workdir = Path(workdir).resolve()
    output = Path(output)
    output = workdir / output if output.parent == Path(".") else output.resolve()
    ckpt = workdir / "model.ckpt.pt"
    if output.exists() and ckpt.exists() and output.stat().st_mtime >= ckpt.stat().st_mtime:
        return output  # already frozen from this checkpoint
    pointer = workdir / "checkpoint"
    model = workdir / pointer.read_text().strip() if pointer.exists() else ckpt
    if not model.exists():
        raise FileNotFoundError(f"no deepmd-kit checkpoint to freeze in {workdir}")
    partial = _partial(output)
    with open(workdir / "dp.log", "a") as log:
        log.write(f"$ (in process) dp --pt freeze -o {partial} {model.name} head={head}\n")
    try:
        _dp_freeze(str(model), str(partial), head)
    except ImportError:
        raise
    except Exception as exc:
        raise RuntimeError(f"deepmd-kit failed (freeze {model}) in {workdir}: {exc}") from exc
    os.replace(partial, output)
    return output


def _dp_freeze(model: str, output: str, head: str | None) -> None:
    """deepmd-kit's freeze entry point (imported here: deepmd-kit is an optional extra)."""
    try:
        from deepmd.pt.entrypoints.main import freeze as dp_freeze
    except ImportError as exc:
        msg = f"{exc}. Install the optional dependency: pip install 'pfd_ase[deepmd]'"
        raise ImportError(msg) from exc
    with warnings.catch_warnings():  # torch.jit.script/save are deprecated in torch 2.13
        warnings.simplefilter("ignore", DeprecationWarning)
        dp_freeze(model=model, output=output, head=head)


def _partial(output: Path) -> Path:
    """Where deepmd-kit writes ``output`` before it is renamed (same folder, ``.pth``
    suffix: ``dp freeze`` replaces any other)."""
    return output.with_name(f".{output.stem}.partial.pth")


def compress(
    model: str | os.PathLike,
    output: str | os.PathLike,
    input_json: str | os.PathLike | None = None,
    threads: int | None = None,
) -> Path:
    """``dp --pt compress`` a frozen model (tabulated embedding nets, same predictions, faster).

    Raises ``RuntimeError`` when deepmd-kit was built without its custom operators or the
    descriptor cannot be compressed; callers fall back to the uncompressed model.
    """
    model, output = Path(model).resolve(), Path(output).resolve()
    if output.exists() and output.stat().st_mtime >= model.stat().st_mtime:
        return output
    partial = _partial(output)  # renamed once complete, as in freeze
    args = ["compress", "-i", str(model), "-o", str(partial)]
    if input_json is not None:
        args += ["-t", str(Path(input_json).resolve())]
    run_dp(args, output.parent, threads=threads, log_name="compress.log")
    os.replace(partial, output)
    return output


def read_lcurve(path: str | os.PathLike) -> dict[str, list[float]]:
    """Columns of a deepmd-kit ``lcurve.out`` by name (``step``, ``rmse_f_trn``, ...)."""
    lines = Path(path).read_text().splitlines()
    header = next(line for line in lines if line.startswith("#")).lstrip("#").split()
    cols: dict[str, list[float]] = {h: [] for h in header}
    for line in lines:
        if line.startswith("#") or not line.strip():
            continue
        for h, v in zip(header, line.split(), strict=False):
            cols[h].append(float(v))
    return cols
