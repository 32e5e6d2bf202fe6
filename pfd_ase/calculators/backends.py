"""Model back-ends behind :class:`~pfd_ase.calculators.PFDCalculator`.

A back-end loads one model file and evaluates one structure, returning energy (eV),
forces (eV/Å), per-atom energies (eV) and the virial (eV, 3×3). Heavy libraries are
imported only when a model of that kind is loaded.
"""

from __future__ import annotations

import logging
import operator
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from ase import Atoms

from pfd_ase.calculators.neighbours import ExtendedSystem, VerletList
from pfd_ase.calculators.prediction import ModelBackend, Prediction
from pfd_ase.models import ModelSpec, load_error_reason, resolve_model

__all__ = ["DeepmdBackend", "ModelBackend", "Prediction", "load_backend", "quiet_model_load"]


def _missing(extra: str, exc: ImportError) -> ImportError:
    return ImportError(f"{exc}. Install the optional dependency: pip install 'pfd_ase[{extra}]'")


#: Advisory log records that loading a deepmd-kit model emits, by logger name and message
#: start: torch's "Triton not available" (nine at the first load in a process, one per
#: Triton kernel deepmd-kit registers), deepmd-kit's thread-count advice (at its first
#: PyTorch import) and its DP_INFER_BATCH_SIZE advice (at every load, on CPU).
LOAD_ADVISORIES: dict[str, tuple[str, ...]] = {
    "torch._library.triton": ("Triton not available",),
    "deepmd.env": ("To get the best performance, it is recommended to adjust the number of",),
    "deepmd.utils.batch_size": ("You can use the environment variable DP_INFER_BATCH_SIZE",),
}


class AdvisoryFilter(logging.Filter):
    """Drops the log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@contextmanager
def quiet_model_load() -> Iterator[None]:
    """While loading a model: drop the advisory records of :data:`LOAD_ADVISORIES`.

    A filter on each of those named loggers, removed on exit; every other record of theirs,
    and every other logger, is left alone (nothing is configured on import).
    """
    filters = [(logging.getLogger(n), AdvisoryFilter(p)) for n, p in LOAD_ADVISORIES.items()]
    for logger, advisory in filters:
        logger.addFilter(advisory)
    try:
        yield
    finally:
        for logger, advisory in filters:
            logger.removeFilter(advisory)


#: Local atoms per ``forward_lower`` call of a model without message passing: the model's
#: working memory grows with the atoms of one call, so larger cells go in pieces.
DEFAULT_CHUNK_ATOMS = 4096


class DeepmdBackend:
    """A deepmd-kit PyTorch model: frozen ``.pth`` or checkpoint ``.pt`` (single or multi-task).

    Parameters
    ----------
    path
        Model file, deepmd-kit pre-trained name or :class:`~pfd_ase.models.ModelSpec`.
    head
        Branch of a multi-task checkpoint (name or alias, case-insensitive).
    neighbour_list
        ``"verlet"`` (default): the model's lower interface on a linear-scaling Verlet list
        with a skin, reused between calls (:class:`~pfd_ase.calculators.neighbours.VerletList`),
        as LAMMPS does; ``"native"``: deepmd-kit's ``DeepPot.eval`` (a dense all-pairs list,
        quadratic in memory). Both give the same results to rounding.
    skin
        Verlet skin (Å).
    chunk_atoms
        On the Verlet path, for a model without message passing (se_e2_a, se_atten,
        DPA-1; not DPA-2/DPA-3): local atoms per call of the model. A larger cell is
        evaluated in pieces of consecutive atoms, each with the neighbours it reaches, and
        the results summed (exact: each atom's energy depends on its own neighbourhood
        only), so the model's working memory stays that of ``chunk_atoms`` atoms.
        ``None``: one call whatever the size. torch's own threads
        (``torch.set_num_threads``) parallelise each call (``bench/scale.py``).
    """

    def __init__(
        self,
        path: str | os.PathLike | ModelSpec,
        head: str | None = None,
        neighbour_list: str = "verlet",
        skin: float = 1.0,
        chunk_atoms: int | None = DEFAULT_CHUNK_ATOMS,
    ) -> None:
        if neighbour_list not in ("verlet", "native"):
            raise ValueError(f"neighbour_list must be 'verlet' or 'native', not {neighbour_list!r}")
        if chunk_atoms is not None and (isinstance(chunk_atoms, bool) or chunk_atoms < 1):
            raise ValueError(f"chunk_atoms must be >= 1 or None, not {chunk_atoms}")
        self.chunk_atoms = None if chunk_atoms is None else operator.index(chunk_atoms)
        spec = resolve_model(path, head=head, fetch=True)
        if spec.kind != "deepmd":
            raise ValueError(f"not a deepmd-kit PyTorch model (.pt or .pth): {spec.source}")
        if spec.head is not None and spec.head.upper() == "RANDOM":
            raise ValueError("head='RANDOM' applies to fine-tuning only, not to evaluation")
        self.spec = spec
        self.path = spec.path
        self.head = head = spec.head
        with quiet_model_load():
            try:
                from deepmd.infer import DeepPot
            except ImportError as exc:
                raise _missing("deepmd", exc) from exc
            kwargs = {"head": head} if head else {}
            try:
                self._dp = DeepPot(str(self.path), **kwargs)
            except (RuntimeError, pickle.UnpicklingError, EOFError) as exc:  # a damaged file
                what = (
                    "frozen deepmd-kit model"
                    if self.path.suffix == ".pth"
                    else "deepmd-kit checkpoint"
                )
                raise ValueError(
                    f"cannot read {what} {self.path}: {load_error_reason(exc)}"
                ) from exc
        self.type_map: list[str] = list(self._dp.get_type_map())
        self._type_index = {el: i for i, el in enumerate(self.type_map)}
        self._lower = None
        self._local = False
        if neighbour_list == "verlet":
            inner = self._dp.deep_eval.dp.model["Default"]
            if hasattr(inner, "forward_lower") and not getattr(inner, "has_spin", False):
                self._lower = inner
                self.verlet = VerletList(float(self._dp.get_rcut()), skin)
                self._local = not bool(inner.has_message_passing())

    def evaluate(self, atoms: Atoms, atomic: bool = True) -> Prediction:
        types = np.array([self._type_index[s] for s in atoms.get_chemical_symbols()], dtype=int)
        if self._lower is not None:
            return self._evaluate_lower(atoms, types, atomic)
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

    def _evaluate_lower(self, atoms: Atoms, types: np.ndarray, atomic: bool) -> Prediction:
        system = self.verlet.update(atoms.positions, atoms.cell.array, atoms.pbc)
        n = len(atoms)
        forces = np.zeros((n, 3))
        energies = np.zeros(n) if atomic else None
        energy, virial = 0.0, np.zeros((3, 3))
        for piece in self.pieces(system):
            e, ext_force, atom_energy, vir = self._forward(piece, types)
            for k in range(3):
                forces[:, k] += np.bincount(piece.mapping, weights=ext_force[:, k], minlength=n)
            if atomic:
                local = piece.mapping[: len(piece.nlist)]
                energies[local] = atom_energy[: len(local)]
            energy += e
            virial += vir
        return Prediction(energy=energy, forces=forces, energies=energies, virial=virial)

    def pieces(self, system: ExtendedSystem) -> list[ExtendedSystem]:
        """The pieces in which ``system`` goes to the model (see ``chunk_atoms``)."""
        n = len(system.nlist)
        size = self._piece_size(n)
        return [system] if size >= n else system.split(size)

    def _piece_size(self, n: int) -> int:
        """Local atoms per ``forward_lower`` call: all ``n`` for a model with message
        passing, else at most ``chunk_atoms``."""
        if not self._local or self.chunk_atoms is None:
            return n
        return min(n, self.chunk_atoms)

    def _forward(
        self, system: ExtendedSystem, types: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """One ``forward_lower`` call: energy, extended forces, atomic energies, virial."""
        import torch
        from deepmd.pt.utils.env import DEVICE, GLOBAL_PT_FLOAT_PRECISION

        def tensor(array: np.ndarray, dtype) -> torch.Tensor:
            return torch.as_tensor(array, dtype=dtype, device=DEVICE).unsqueeze(0)

        out = self._lower.forward_lower(
            tensor(system.coords, GLOBAL_PT_FLOAT_PRECISION),
            tensor(types[system.mapping], torch.long),
            tensor(system.nlist, torch.long),
            tensor(system.mapping, torch.long),
            do_atomic_virial=False,
        )

        def array(key: str) -> np.ndarray:
            return out[key].detach().cpu().numpy().astype(float)

        return (
            float(array("energy").reshape(-1)[0]),
            array("extended_force").reshape(-1, 3),
            array("atom_energy").reshape(-1),
            array("virial").reshape(3, 3),
        )


def load_backend(model: str | os.PathLike | ModelSpec, head: str | None = None) -> ModelBackend:
    """Load a model (a file, a pre-trained name or a :class:`~pfd_ase.models.ModelSpec`).

    The kind of model is decided by :func:`pfd_ase.models.resolve_model` alone.
    """
    spec = resolve_model(model, head=head, fetch=True)
    if spec.kind == "chgnet":
        from pfd_ase.calculators.chgnet import CHGNetBackend

        return CHGNetBackend(spec)
    if spec.kind == "sevennet":
        from pfd_ase.calculators.sevennet import SevenNetBackend

        return SevenNetBackend(spec)
    return DeepmdBackend(spec)
