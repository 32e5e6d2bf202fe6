"""A stored bank of training-set QUESTS descriptors, and the dH of new atoms against it.

A :class:`DescriptorBank` holds the descriptors of every atomic environment of a training set
with the settings they were computed with (``k``, ``cutoff``) and the kernel bandwidth ``h``;
:meth:`DescriptorBank.delta_entropy` gives the differential entropy dH (nats,
:func:`pfd_ase.selectors.quests.delta_entropy`) of each atom of a new structure against it: a
model-free extrapolation signal (dH > 0: the environment is less well represented than one
exact copy in the bank would make it). :class:`pfd_ase.calculators.DHMonitor` reports it
during MD, and an exploration can stop a walker or mark frames on it
(:class:`pfd_ase.explore.DHWatch`).

A bank may stand for more environments than it stores: built with ``max_environments`` it
keeps a uniform random subsample of ``m`` of the ``n`` environments and weights each kernel
sum by ``n / m`` (an unbiased estimate of the full sum), so dH keeps the full set's scale:
``dH = -log((n/m) sum_{i in sample} K(Y, X_i))``.

Files: :meth:`~DescriptorBank.save` writes a ``.npz`` (descriptors, ``k``, ``cutoff``, ``h``,
``n_environments``, ``n_frames``, ``source``, ``format``); :meth:`~DescriptorBank.load` reads
it back, or builds a bank from an extxyz file of frames.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import numpy as np
from ase import Atoms

from pfd_ase.selectors import quests
from pfd_ase.selectors.base import check_count, check_positive

__all__ = ["DH_KEY", "MAX_DH_KEY", "DescriptorBank"]

#: ``atoms.arrays`` key of the per-atom dH (nats) against a bank.
DH_KEY = "pfd_dH"
#: ``atoms.info`` key of the largest per-atom dH of a structure (nats).
MAX_DH_KEY = "pfd_max_dH"

_FORMAT = "pfd_ase.descriptor_bank/1"


class DescriptorBank:
    """Descriptors of a training set's atomic environments, for dH of new atoms against it.

    Parameters
    ----------
    descriptors
        ``(m, 2k - 1)`` QUESTS descriptors (1/Å) of the stored environments.
    k, cutoff
        The descriptor settings they were computed with (neighbours; cutoff radius, Å).
    h
        Gaussian kernel bandwidth, descriptor units (1/Å).
    n_environments
        Environments the bank stands for (``>= m``; default ``m``): a subsample of ``m``
        weights every kernel sum by ``n_environments / m``.
    n_frames
        Frames the environments came from (a record; 0 if unknown).
    source
        Where they came from (a record, e.g. a file name).
    """

    def __init__(
        self,
        descriptors: np.ndarray,
        k: int = quests.DEFAULT_K,
        cutoff: float = quests.DEFAULT_CUTOFF,
        h: float = quests.DEFAULT_BANDWIDTH,
        *,
        n_environments: int | None = None,
        n_frames: int = 0,
        source: str = "",
    ) -> None:
        self.k = check_count(k, "k")
        self.cutoff = check_positive(cutoff, "cutoff", "Å")
        self.h = check_positive(h, "h", "1/Å")
        x = np.ascontiguousarray(descriptors, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != 2 * self.k - 1:
            raise ValueError(
                f"descriptors must be an (environments, 2k - 1 = {2 * self.k - 1}) array, "
                f"got shape {x.shape}"
            )
        if len(x) == 0:
            raise ValueError("a descriptor bank needs at least one environment")
        if not np.isfinite(x).all():
            raise ValueError("descriptors contain nan or inf")
        x.flags.writeable = False
        self.descriptors = x
        n_env = len(x) if n_environments is None else check_count(n_environments, "n_environments")
        if n_env < len(x):
            raise ValueError(f"n_environments ({n_env}) is below the stored rows ({len(x)})")
        self.n_environments = n_env
        if isinstance(n_frames, bool) or int(n_frames) < 0:
            raise ValueError(f"n_frames must be a non-negative integer, got {n_frames!r}")
        self.n_frames = int(n_frames)
        self.source = str(source)

    # ------------------------------------------------------------------ construction, files

    @classmethod
    def from_frames(
        cls,
        frames: Atoms | Iterable[Atoms],
        *,
        k: int = quests.DEFAULT_K,
        cutoff: float = quests.DEFAULT_CUTOFF,
        h: float = quests.DEFAULT_BANDWIDTH,
        max_environments: int | None = None,
        seed: int = 0,
        source: str = "",
    ) -> DescriptorBank:
        """The bank of every atom of ``frames`` (a training set).

        Parameters
        ----------
        frames
            The structures (labels are not used).
        k, cutoff, h
            Descriptor neighbours, cutoff radius (Å) and kernel bandwidth (1/Å).
        max_environments
            Keep at most this many environments: a uniform random subsample
            (``np.random.default_rng(seed)``), weighted to stand for all of them.
        seed
            Seed of the subsample.
        source
            A record of where the frames came from.
        """
        frames = [frames] if isinstance(frames, Atoms) else list(frames)
        x = quests.descriptors(frames, k=k, cutoff=cutoff)
        n = len(x)
        if max_environments is not None:
            keep = check_count(max_environments, "max_environments")
            if n > keep:
                rows = np.random.default_rng(seed).choice(n, size=keep, replace=False)
                x = x[np.sort(rows)]
        return cls(x, k, cutoff, h, n_environments=max(n, 1), n_frames=len(frames), source=source)

    @classmethod
    def load(cls, path: str | os.PathLike, **options) -> DescriptorBank:
        """A bank from a ``.npz`` written by :meth:`save`, or built from an extxyz of frames.

        ``options`` (``k``, ``cutoff``, ``h``, ``max_environments``, ``seed``) apply to
        frames only; a ``.npz`` keeps the settings it was saved with.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no descriptor bank or frames at {path}")
        if path.suffix != ".npz":
            from pfd_ase.data import read_frames

            frames = read_frames(path)
            if not frames:
                raise ValueError(f"{path} holds no frames to build a descriptor bank from")
            return cls.from_frames(frames, source=str(path), **options)
        if options:
            raise TypeError(f"a saved bank keeps its own settings; got {sorted(options)}")
        try:
            with np.load(path, allow_pickle=False) as data:
                fmt = str(data["format"])
                if fmt != _FORMAT:
                    raise ValueError(f"format {fmt!r}, expected {_FORMAT!r}")
                return cls(
                    data["descriptors"],
                    int(data["k"]),
                    float(data["cutoff"]),
                    float(data["h"]),
                    n_environments=int(data["n_environments"]),
                    n_frames=int(data["n_frames"]),
                    source=str(data["source"]),
                )
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"{path} is not a descriptor bank: {exc}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the bank to ``path`` (a ``.npz``, written atomically); return the path."""
        from pfd_ase._io import atomic_path

        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"a descriptor bank is saved as .npz, not {path.name!r}")
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                format=np.array(_FORMAT),
                descriptors=self.descriptors,
                k=np.array(self.k),
                cutoff=np.array(self.cutoff),
                h=np.array(self.h),
                n_environments=np.array(self.n_environments),
                n_frames=np.array(self.n_frames),
                source=np.array(self.source),
            )
        return path

    # ------------------------------------------------------------------ dH

    def __len__(self) -> int:
        return len(self.descriptors)

    def __repr__(self) -> str:
        return (
            f"DescriptorBank({len(self)} environments of {self.n_environments}, "
            f"k={self.k}, cutoff={self.cutoff}, h={self.h})"
        )

    @property
    def log_weight(self) -> float:
        """``log(n_environments / stored rows)``: 0 for a full bank."""
        return float(np.log(self.n_environments / len(self)))

    @cached_property
    def identity(self) -> str:
        """SHA-256 (hex) of the descriptors and the settings: equal banks, equal identity."""
        digest = hashlib.sha256()
        settings = [self.k, self.cutoff, self.h, self.n_environments]
        digest.update(json.dumps(settings).encode())
        digest.update(self.descriptors.tobytes())
        return digest.hexdigest()

    def describe(self) -> dict:
        """A JSON record of the bank (identity, settings, sizes, source)."""
        return {
            "identity": self.identity,
            "k": self.k,
            "cutoff": self.cutoff,
            "h": self.h,
            "n_stored": len(self),
            "n_environments": self.n_environments,
            "n_frames": self.n_frames,
            "source": self.source,
        }

    def descriptors_of(self, atoms: Atoms | Iterable[Atoms]) -> np.ndarray:
        """QUESTS descriptors of ``atoms`` with the bank's ``k`` and ``cutoff``."""
        return quests.descriptors(atoms, k=self.k, cutoff=self.cutoff)

    def delta_entropy(
        self, atoms: Atoms | Iterable[Atoms] | np.ndarray, *, threads: int | None = None
    ) -> np.ndarray:
        """Per-atom dH (nats) against the bank.

        Parameters
        ----------
        atoms
            A structure, several (rows in frame then atom order) or precomputed descriptors
            ``(m, 2k - 1)`` (computed with the bank's ``k`` and ``cutoff``).
        threads
            Worker threads of the kernel sums (see
            :func:`pfd_ase.selectors.quests.delta_entropy`); the value does not depend on it.

        Returns
        -------
        np.ndarray
            ``(n_atoms,)`` float64, ``+inf`` where every kernel term underflows.
        """
        if isinstance(atoms, np.ndarray):
            y = atoms
        else:
            y = self.descriptors_of(atoms)
        if len(y) == 0:
            return np.zeros(0)
        return quests.delta_entropy(y, self.descriptors, self.h, threads=threads) - self.log_weight
