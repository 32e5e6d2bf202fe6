"""Model back-ends behind :class:`~pfd_ase.calculators.PFDCalculator`.

A back-end loads one model file and evaluates one structure, returning energy (eV),
forces (eV/Å), per-atom energies (eV) and the virial (eV, 3×3). Heavy libraries are
imported only when a model of that kind is loaded.
"""

from __future__ import annotations

import os

import numpy as np
from ase import Atoms

from pfd_ase.calculators.prediction import ModelBackend, Prediction
from pfd_ase.models import ModelSpec, resolve_model

__all__ = ["DeepmdBackend", "ModelBackend", "Prediction", "load_backend"]


def _missing(extra: str, exc: ImportError) -> ImportError:
    return ImportError(f"{exc}. Install the optional dependency: pip install 'pfd_ase[{extra}]'")


class DeepmdBackend:
    """A deepmd-kit PyTorch model: frozen ``.pth`` or checkpoint ``.pt`` (single or multi-task).

    Parameters
    ----------
    path
        Model file, deepmd-kit pre-trained name or :class:`~pfd_ase.models.ModelSpec`.
    head
        Branch of a multi-task checkpoint (name or alias, case-insensitive).
    """

    def __init__(self, path: str | os.PathLike | ModelSpec, head: str | None = None) -> None:
        spec = resolve_model(path, head=head, fetch=True)
        if spec.kind != "deepmd":
            raise ValueError(f"not a deepmd-kit PyTorch model (.pt or .pth): {spec.source}")
        if spec.head is not None and spec.head.upper() == "RANDOM":
            raise ValueError("head='RANDOM' applies to fine-tuning only, not to evaluation")
        self.spec = spec
        self.path = spec.path
        self.head = head = spec.head
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


def load_backend(model: str | os.PathLike | ModelSpec, head: str | None = None) -> ModelBackend:
    """Load a model (a file, a pre-trained name or a :class:`~pfd_ase.models.ModelSpec`).

    The kind of model is decided by :func:`pfd_ase.models.resolve_model` alone.
    """
    spec = resolve_model(model, head=head, fetch=True)
    if spec.kind == "chgnet":
        from pfd_ase.calculators.chgnet import CHGNetBackend

        return CHGNetBackend(spec)
    return DeepmdBackend(spec)
