"""CHGNet back-end of :class:`~pfd_ase.calculators.PFDCalculator`.

Loads the pre-trained universal CHGNet shipped inside the ``chgnet`` wheel (names
``"chgnet"``, ``"CHGNet-0.3.0"``, ``"CHGNet-0.2.0"``, ``"CHGNet-r2scan"``; no network
needed) or a fine-tuned checkpoint written by
:func:`pfd_ase.training.chgnet.finetune_chgnet` (CHGNet ``Trainer.save`` files,
``*.pth.tar``; ``*.chgnet.pt`` files holding either that format or ``CHGNet.as_dict()``).

Units: CHGNet predicts the energy per atom (eV/atom), forces (eV/Å) and the stress in
GPa with ASE's sign (``σ = (1/V) ∂E/∂ε``, positive under tension). The back-end returns
the total energy (eV), forces, per-atom energies (eV) and the virial
``-σ·V`` (eV, 3×3; ``None`` for a non-periodic structure). ``chgnet`` and ``torch`` are
imported only when a model is loaded.

Checkpoint files are read with ``torch.load(..., weights_only=True)``
(:func:`read_chgnet_checkpoint`): tensors and plain data (dicts, lists, strings, numbers),
which is all a CHGNet checkpoint holds; a file that needs any other Python object to load
is refused instead of unpickled (unpickling runs code the file names).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from pfd_ase.calculators.prediction import Prediction
from pfd_ase.models import (
    CHGNET_PRETRAINED_VERSIONS,
    ModelSpec,
    chgnet_pretrained_version,
    resolve_model,
)

__all__ = [
    "CHGNET_MAX_Z",
    "GPA_PER_EV_A3",
    "CHGNetBackend",
    "atoms_to_structure",
    "chgnet_version",
    "load_chgnet_model",
    "read_chgnet_checkpoint",
]

#: CHGNet's own conversion factor from eV/Å³ to GPa (``chgnet.model.model``), so that
#: converting back and forth is exact.
GPA_PER_EV_A3 = 160.21766208
#: Heaviest element CHGNet embeds (its composition model and atom embedding span Z = 1..94).
CHGNET_MAX_Z = 94
#: Vacuum added around a non-periodic structure (Å) beyond CHGNet's 6 Å atom-graph cutoff.
_VACUUM_MARGIN = 2.0


def _import_chgnet() -> Any:
    try:
        import chgnet.model
    except ImportError as exc:
        raise ImportError(
            f"{exc}. CHGNet models need the optional dependency: pip install 'pfd_ase[chgnet]'"
        ) from exc
    return chgnet.model


def chgnet_version() -> str | None:
    """Installed ``chgnet`` package version (``None`` when missing)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chgnet")
    except PackageNotFoundError:
        return None


def read_chgnet_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The contents of a CHGNet checkpoint file, loaded safely (``weights_only=True``).

    Accepts CHGNet ``Trainer.save`` files (``{"model": {"state_dict", "model_args"},
    "optimizer", "scheduler", "training_history", "trainer_args"}``) and ``CHGNet.as_dict()``
    files (``{"state_dict", "model_args"}``): tensors and plain data only.

    Returns
    -------
    dict
        What the file holds (the ``Trainer.save`` layout or the ``as_dict()`` one).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file cannot be read, needs Python objects beyond tensors and plain data (it is
        not unpickled), or does not hold a CHGNet model; the message names the file.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CHGNet checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:  # not a global: a damaged or foreign file
            raise ValueError(
                f"cannot read CHGNet checkpoint {path}: damaged or not a torch file"
            ) from exc
        raise ValueError(
            f"{path} needs the Python object {found.group(1)} to load, which a CHGNet "
            "checkpoint does not hold (tensors and plain data only): not unpickled"
        ) from exc
    except Exception as exc:
        raise ValueError(
            f"cannot read CHGNet checkpoint {path}: {type(exc).__name__}: {exc}"
        ) from exc
    model = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(model, dict) or "state_dict" not in model or "model_args" not in model:
        raise ValueError(
            f"{path} is not a CHGNet checkpoint (expected Trainer.save or CHGNet.as_dict() "
            "contents: state_dict and model_args)"
        )
    return state


def load_chgnet_model(model: str | os.PathLike, use_device: str | None = None) -> Any:
    """Load a CHGNet model (``chgnet.model.CHGNet``) in evaluation mode.

    Parameters
    ----------
    model
        A pre-trained name (``"chgnet"``, ``"CHGNet-0.3.0"``, a bare version such as
        ``"0.3.0"``) or a checkpoint file (``Trainer.save`` format or ``CHGNet.as_dict()``).
    use_device
        ``"cpu"``, ``"cuda"``, ...; ``None`` lets CHGNet choose (CUDA when available).
    """
    cm = _import_chgnet()
    import torch
    from chgnet.utils import determine_device

    if isinstance(model, ModelSpec):
        model = model.path if model.path is not None else str(model.name)
    text = os.fspath(model)
    version = chgnet_pretrained_version(text)
    if version is None and not Path(text).is_file() and text in CHGNET_PRETRAINED_VERSIONS:
        version = text
    # CHGNet prints "CHGNet vX initialized with N parameters" on every construction, and
    # its random initialisation (overwritten by the weights) draws from torch's global RNG.
    with contextlib.redirect_stdout(io.StringIO()), torch.random.fork_rng(devices=[]):
        if version is not None:
            net = cm.CHGNet.load(model_name=version, use_device="cpu", verbose=False)
        else:
            path = Path(text)
            if not path.is_file():
                raise FileNotFoundError(
                    f"no CHGNet checkpoint at {path} (pre-trained names: 'chgnet', "
                    f"{', '.join(repr('CHGNet-' + v) for v in CHGNET_PRETRAINED_VERSIONS)})"
                )
            state = read_chgnet_checkpoint(path)
            net = cm.CHGNet.from_dict(state.get("model", state))
    net = net.to(determine_device(use_device=use_device))
    net.eval()
    return net


def atoms_to_structure(atoms: Atoms) -> Any:
    """A pymatgen ``Structure`` of ``atoms`` (same Cartesian positions, no wrapping).

    A non-periodic structure is placed in a cubic box with more vacuum than CHGNet's
    6 Å cutoff, so that periodic images do not interact.
    """
    from pymatgen.core import Lattice, Structure

    if atoms.pbc.all():
        cell = atoms.cell.array
    elif not atoms.pbc.any():
        extent = np.ptp(atoms.positions, axis=0).max() if len(atoms) else 0.0
        cell = np.eye(3) * (extent + 6.0 + _VACUUM_MARGIN)
    else:
        raise NotImplementedError(
            f"CHGNet: mixed periodic boundary conditions {atoms.pbc.tolist()} are not supported"
        )
    return Structure(
        Lattice(cell),
        atoms.numbers.tolist(),
        atoms.positions,
        coords_are_cartesian=True,
    )


class CHGNetBackend:
    """CHGNet model behind :class:`~pfd_ase.calculators.PFDCalculator`.

    Parameters
    ----------
    path
        A fine-tuned checkpoint (``*.pth.tar`` written by CHGNet's ``Trainer.save``, as
        :func:`pfd_ase.training.chgnet.finetune_chgnet` does, or ``*.chgnet.pt``) or a
        pre-trained name: ``"chgnet"`` (= ``"CHGNet-0.3.0"``), ``"CHGNet-0.2.0"``,
        ``"CHGNet-r2scan"``.
    head
        Must be ``None``: CHGNet has a single energy head.
    use_device
        Torch device (``None``: CHGNet's choice, CUDA when available).

    Notes
    -----
    ``type_map`` lists every element CHGNet embeds (H … Pu, Z = 1..94). Per-atom energies
    are CHGNet's site energies (read-out MLP output of each atom plus its elemental
    reference energy); they add up to the total energy to float32 rounding. A CHGNet
    that pools before its read-out (``mlp_first=False``, not the released models) has no
    site energies: the total is then split equally between the atoms. CHGNet
    computes in float32, so energies carry a relative rounding of about 1e-7 and forces
    about 1e-6 eV/Å.
    """

    def __init__(
        self,
        path: str | os.PathLike | ModelSpec,
        head: str | None = None,
        use_device: str | None = None,
    ) -> None:
        spec = resolve_model(path, head=head)
        if spec.kind != "chgnet":
            raise ValueError(f"not a CHGNet model: {spec.source}")
        self.spec = spec
        self.path = spec.path if spec.path is not None else Path(spec.source)
        self.head = None
        self.pretrained = spec.name.split("-", 1)[1] if spec.name else None
        self.model = load_chgnet_model(spec, use_device=use_device)
        self.device = next(self.model.parameters()).device
        self.version = self.model.version
        self.type_map: list[str] = list(chemical_symbols[1 : CHGNET_MAX_Z + 1])
        self.cutoff = float(self.model.graph_converter.atom_graph_cutoff)

    def evaluate(self, atoms: Atoms, atomic: bool = True) -> Prediction:
        periodic = bool(atoms.pbc.all())
        structure = atoms_to_structure(atoms)
        graph = self.model.graph_converter(structure)
        pred = self.model.predict_graph(
            graph.to(self.device), task="efs" if periodic else "ef", return_site_energies=True
        )
        n = len(atoms)
        per_atom = float(np.asarray(pred["e"]).reshape(-1)[0])
        energy = per_atom * n if self.model.is_intensive else per_atom
        virial = None
        if periodic:
            stress = np.asarray(pred["s"], dtype=float).reshape(3, 3) / GPA_PER_EV_A3
            virial = -stress * atoms.get_volume()
        if "site_energies" in pred:
            energies = np.asarray(pred["site_energies"], dtype=float).reshape(n)
        else:  # models pooling before the read-out have no site energies
            energies = np.full(n, energy / max(n, 1))
        return Prediction(
            energy=energy,
            forces=np.asarray(pred["f"], dtype=float).reshape(n, 3),
            energies=energies,
            virial=virial,
        )
