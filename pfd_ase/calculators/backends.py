"""Model back-ends behind :class:`~pfd_ase.calculators.PFDCalculator`.

A back-end loads one model file and evaluates one structure, returning energy (eV),
forces (eV/Å), per-atom energies (eV) and the virial (eV, 3×3). Heavy libraries are
imported only when a model of that kind is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from ase import Atoms


@dataclass
class Prediction:
    """One model's prediction for one structure."""

    energy: float
    forces: np.ndarray
    energies: np.ndarray | None
    virial: np.ndarray | None = None


class ModelBackend(Protocol):
    """What PFDCalculator needs from a model."""

    type_map: list[str]

    def evaluate(self, atoms: Atoms, atomic: bool = True) -> Prediction: ...


def _missing(extra: str, exc: ImportError) -> ImportError:
    return ImportError(f"{exc}. Install the optional dependency: pip install 'pfd_ase[{extra}]'")


def list_heads(path: str | os.PathLike) -> list[str]:
    """Branches of a deepmd-kit checkpoint (``[]`` for a single-task model or a frozen model)."""
    path = Path(path)
    if path.suffix != ".pt":
        return []
    params = _checkpoint_params(path)
    return list(params.get("model_dict", {}))


def _checkpoint_params(path: Path) -> dict:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a deepmd dependency
        raise _missing("deepmd", exc) from exc
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = state.get("model", state)
    return state["_extra_state"]["model_params"]


def _alias_map(model_dict: dict) -> dict[str, str]:
    """Map every head name and alias (lower-cased) to its head."""
    out = {}
    for name, params in model_dict.items():
        for alias in [name, *params.get("model_branch_alias", [])]:
            out.setdefault(alias.lower(), name)
    return out


class DeepmdBackend:
    """A deepmd-kit PyTorch model: frozen ``.pth`` or checkpoint ``.pt`` (single or multi-task).

    Parameters
    ----------
    path
        Model file.
    head
        Branch of a multi-task checkpoint (name or alias, case-insensitive).
    """

    def __init__(self, path: str | os.PathLike, head: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model file not found: {self.path}")
        if self.path.suffix not in (".pt", ".pth"):
            raise ValueError(f"not a deepmd-kit PyTorch model (.pt or .pth): {self.path}")
        heads = list_heads(self.path)
        if heads:
            aliases = _alias_map(_checkpoint_params(self.path)["model_dict"])
            if head is None:
                raise ValueError(
                    f"{self.path} is a multi-task model: choose a head with head=...; "
                    f"available heads: {heads}"
                )
            if head.lower() not in aliases:
                raise ValueError(f"no head named {head!r} in {self.path}; available heads: {heads}")
            head = aliases[head.lower()]
        elif head is not None:
            raise ValueError(
                f"{self.path} is a single-task model (it has no heads); do not pass head={head!r}"
            )
        self.head = head
        try:
            from deepmd.infer import DeepPot
        except ImportError as exc:
            raise _missing("deepmd", exc) from exc
        self._dp = DeepPot(str(self.path), head=head) if head else DeepPot(str(self.path))
        self.type_map: list[str] = list(self._dp.get_type_map())
        self._type_index = {el: i for i, el in enumerate(self.type_map)}

    def evaluate(self, atoms: Atoms, atomic: bool = True) -> Prediction:
        types = np.array([self._type_index[s] for s in atoms.get_chemical_symbols()], dtype=int)
        coords = atoms.get_positions().reshape(1, -1)
        cell = atoms.cell.array.reshape(1, 9) if atoms.pbc.all() else None
        # per-atom outputs cost 2-3x (deepmd also builds the per-atom virial): only on request
        out = self._dp.eval(coords, cell, types, atomic=atomic)
        return Prediction(
            energy=float(np.asarray(out[0]).reshape(-1)[0]),
            forces=np.asarray(out[1], dtype=float).reshape(-1, 3),
            energies=np.asarray(out[3], dtype=float).reshape(-1) if atomic else None,
            virial=np.asarray(out[2], dtype=float).reshape(3, 3),
        )


def load_backend(path: str | os.PathLike, head: str | None = None) -> ModelBackend:
    """Load a model file with the right back-end, chosen from its name and contents.

    Besides files, the names of the pre-trained CHGNet models shipped with the ``chgnet``
    wheel are accepted: ``"chgnet"`` (= ``"CHGNet-0.3.0"``), ``"CHGNet-0.2.0"``,
    ``"CHGNet-r2scan"``.
    """
    path = Path(path)
    if path.suffix in (".pt", ".pth") and not _is_chgnet_file(path):
        return DeepmdBackend(path, head=head)
    if _is_chgnet_file(path):
        from pfd_ase.calculators.chgnet import CHGNetBackend

        return CHGNetBackend(path, head=head)
    raise ValueError(
        f"cannot tell which kind of model {path} is: expected a deepmd-kit .pt/.pth file, "
        "a CHGNet checkpoint (*.pth.tar, *.chgnet.pt) or a pre-trained CHGNet name "
        "('chgnet', 'CHGNet-0.3.0')"
    )


def _is_chgnet_file(path: Path) -> bool:
    """A CHGNet checkpoint file name, or the name of a pre-trained CHGNet."""
    if path.name.endswith(".pth.tar") or path.name.endswith(".chgnet.pt"):
        return True
    from pfd_ase.calculators.chgnet import is_pretrained_name  # light: no chgnet import

    return is_pretrained_name(path)
