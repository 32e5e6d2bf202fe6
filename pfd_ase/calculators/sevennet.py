"""SevenNet back-end of :class:`~pfd_ase.calculators.PFDCalculator`.

Loads SevenNet-0 (the 11 July 2024 weights shipped inside the ``sevenn`` wheel: names
``"7net-0"``, ``"SevenNet-0"``, ``"sevennet"``; no network needed) or a SevenNet
checkpoint file (``.pth``), such as the one
:func:`pfd_ase.training.sevennet.finetune_sevennet` writes.

Units: SevenNet predicts the total energy (eV), per-atom energies (eV), forces (eV/Å) and
a stress in eV/Å³ in the order ``xx yy zz xy yz zx`` with the sign opposite to ASE's
(positive under compression, ``-(1/V) ∂E/∂ε``), as ``sevenn``'s own ASE calculator reads
it. The back-end returns the virial ``-σ_ASE·V`` (eV, 3×3; ``None`` for a non-periodic
structure), so that :class:`~pfd_ase.calculators.PFDCalculator` reports ASE's stress.
``sevenn`` and ``torch`` are imported only when a model is loaded.

A checkpoint file is first read with
:func:`pfd_ase.models.read_sevennet_checkpoint` (``torch.load(..., weights_only=True)``,
numpy arrays allowed): a file that needs any other Python object is refused instead of
unpickled; only then does ``sevenn`` build the model from it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from ase import Atoms

from pfd_ase.calculators.prediction import Prediction
from pfd_ase.models import (
    ModelSpec,
    read_sevennet_checkpoint,
    resolve_model,
    sevennet_pretrained_path,
)

__all__ = [
    "SevenNetBackend",
    "import_sevenn",
    "load_sevennet_model",
    "quiet_jit",
    "sevennet_device",
    "sevennet_version",
    "stress_to_virial",
]

#: What to run when ``sevenn`` is missing.
_INSTALL = "pip install sevenn (or pip install 'pfd_ase[sevennet]')"
#: The warning torch 2.10+ gives for every ``torch.jit.script`` (``sevenn`` scripts an
#: activation function at import); nothing a user can act on.
_JIT_DEPRECATION = r".*torch\.jit\.script. is deprecated"


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """Drop torch's ``torch.jit.script`` deprecation warning (restored on exit)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
        yield


def import_sevenn() -> Any:
    """Import ``sevenn`` (its checkpoint module), or raise an ``ImportError`` saying how to
    install it."""
    try:
        with quiet_jit():
            import sevenn.checkpoint
    except ImportError as exc:
        raise ImportError(
            f"{exc}. SevenNet models need the optional dependency: {_INSTALL}"
        ) from exc
    return sevenn


def sevennet_version() -> str | None:
    """Installed ``sevenn`` package version (``None`` when missing)."""
    try:
        return version("sevenn")
    except PackageNotFoundError:
        return None


def sevennet_device(use_device: str | None) -> str:
    """The torch device to use: ``use_device``, else CUDA when available, else the CPU."""
    import torch

    if use_device:
        return str(use_device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_sevennet_model(
    model: str | os.PathLike | ModelSpec, use_device: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """Build a SevenNet model (``sevenn``'s ``AtomGraphSequential``) and its configuration.

    Parameters
    ----------
    model
        A pre-trained name (``"7net-0"``, ``"SevenNet-0"``, ``"sevennet"``), a SevenNet
        checkpoint file or a :class:`~pfd_ase.models.ModelSpec` of either.
    use_device
        Torch device of the model (``None``: CUDA when available).

    Returns
    -------
    tuple
        The model (on ``use_device``, evaluation mode, single-structure input) and the
        checkpoint's configuration (``sevenn``'s dict: cutoff, ``chemical_species``,
        ``_type_map``, shift and scale, ...).

    Raises
    ------
    ImportError
        ``sevenn`` is not installed (the message says how to install it).
    ValueError
        Not a SevenNet model; a file that cannot be read or needs Python objects beyond
        tensors, plain data and numpy arrays; a multi-fidelity checkpoint (not supported).
    """
    spec = resolve_model(model)
    if spec.kind != "sevennet":
        raise ValueError(f"not a SevenNet model: {spec.source}")
    import_sevenn()
    import torch
    from sevenn.checkpoint import SevenNetCheckpoint

    if spec.path is None:  # SevenNet-0, in the sevenn wheel
        path = sevennet_pretrained_path()
        if path is None:
            raise FileNotFoundError(
                f"SevenNet-0 is not in the installed sevenn wheel; reinstall: {_INSTALL}"
            )
    else:
        path = spec.path
        read_sevennet_checkpoint(path)  # weights only: refuses a file that runs code
    # Building draws random initial weights (overwritten by the checkpoint's) from
    # torch's global RNG: keep the caller's stream as it was.
    with torch.random.fork_rng(devices=[]), quiet_jit():
        checkpoint = SevenNetCheckpoint(str(path))
        config = checkpoint.config
        if config.get("use_modality") or config.get("_modal_map"):
            raise ValueError(
                f"{path} is a multi-fidelity SevenNet checkpoint, which pfd_ase does not support"
            )
        net = checkpoint.build_model()
    net.set_is_batch_data(False)
    net.to(sevennet_device(use_device))
    net.eval()
    return net, config


def stress_to_virial(stress: np.ndarray, volume: float) -> np.ndarray:
    """The virial ``-σ_ASE·V`` (eV, 3×3) of SevenNet's stress output (eV/Å³, order
    ``xx yy zz xy yz zx``, positive under compression)."""
    xx, yy, zz, xy, yz, zx = np.asarray(stress, dtype=float).reshape(6)
    return np.array([[xx, xy, zx], [xy, yy, yz], [zx, yz, zz]]) * volume


class SevenNetBackend:
    """SevenNet model behind :class:`~pfd_ase.calculators.PFDCalculator`.

    Parameters
    ----------
    path
        A SevenNet checkpoint file (``.pth``, as written by ``sevenn`` or by
        :func:`pfd_ase.training.sevennet.finetune_sevennet`) or ``"7net-0"`` (=
        ``"SevenNet-0"``, ``"sevennet"``), shipped in the ``sevenn`` wheel.
    head
        Must be ``None``: SevenNet has a single energy head.
    use_device
        Torch device (``None``: CUDA when available).

    Notes
    -----
    ``type_map`` lists the elements the model was trained on (89 for SevenNet-0).
    SevenNet computes in float32: energies carry a relative rounding of about 1e-7 and
    forces about 1e-5 eV/Å. The neighbour list is rebuilt at every call (``sevenn``'s,
    matscipy's when installed).
    """

    def __init__(
        self,
        path: str | os.PathLike | ModelSpec,
        head: str | None = None,
        use_device: str | None = None,
    ) -> None:
        spec = resolve_model(path, head=head)
        if spec.kind != "sevennet":
            raise ValueError(f"not a SevenNet model: {spec.source}")
        self.spec = spec
        self.head = None
        self.model, self.config = load_sevennet_model(spec, use_device=use_device)
        with quiet_jit():
            import sevenn._keys as key
            from sevenn.atom_graph_data import AtomGraphData
            from sevenn.train.dataload import unlabeled_atoms_to_graph
        self._keys, self._data, self._graph = key, AtomGraphData, unlabeled_atoms_to_graph
        self.device = next(self.model.parameters()).device
        self.type_map: list[str] = list(self.config["chemical_species"])
        self.cutoff = float(self.config["cutoff"])
        self.version = self.config.get("version")

    def evaluate(self, atoms: Atoms, atomic: bool = True) -> Prediction:
        key = self._keys
        data = self._data.from_numpy_dict(self._graph(atoms, self.cutoff))
        out = self.model(data.to(self.device))
        n = len(atoms)
        virial = None
        if atoms.pbc.all():
            stress = out[key.PRED_STRESS].detach().cpu().numpy()
            virial = stress_to_virial(stress, atoms.get_volume())
        energies = None
        if atomic:
            energies = out[key.ATOMIC_ENERGY].detach().cpu().numpy().astype(float).reshape(n)
        return Prediction(
            energy=float(out[key.PRED_TOTAL_ENERGY].detach().cpu().item()),
            forces=out[key.PRED_FORCE].detach().cpu().numpy().astype(float).reshape(n, 3),
            energies=energies,
            virial=virial,
        )
