"""DHMonitor: any ASE calculator, plus the dH of every atom against a training set.

The differential entropy dH (nats) of an atomic environment against the descriptors of a
model's training set (:class:`~pfd_ase.selectors.DescriptorBank`) is a model-free
extrapolation signal: high where the model has seen nothing like it. The supplement of the
PFD paper (Fig. S13) relates it to the force error; :class:`DHMonitor` reports it during MD
next to any model's energies and forces.

A wrapper rather than an option of :class:`~pfd_ase.calculators.PFDCalculator`: the signal
needs nothing from the model, so it works for every calculator (a CHGNet or SevenNet model,
a deepmd-kit student, a committee, a classical potential) and leaves their results
untouched.
"""

from __future__ import annotations

import os

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from pfd_ase.selectors.bank import DH_KEY, MAX_DH_KEY, DescriptorBank
from pfd_ase.selectors.base import check_count

__all__ = ["DH_KEY", "MAX_DH_KEY", "DHMonitor"]


class DHMonitor(Calculator):
    """Wrap a calculator; after each calculation, the per-atom dH against a descriptor bank.

    Parameters
    ----------
    calc
        The calculator whose results are returned unchanged (energies, forces, stress...).
    bank
        A :class:`~pfd_ase.selectors.DescriptorBank` or a path for
        :meth:`DescriptorBank.load <pfd_ase.selectors.DescriptorBank.load>` (``.npz``, or
        an extxyz of training frames).
    every
        Compute dH on the first structure and then on every ``every``-th new structure
        (positions, cell, atoms or pbc changed); the other calculations carry no dH.
    threads
        Worker threads of the kernel sums (default: ``PFD_THREADS``, else
        ``min(2, compute_threads())``: :mod:`pfd_ase.threads`).
    **kwargs
        Passed to :class:`ase.calculators.calculator.Calculator`.

    Notes
    -----
    Besides the wrapped calculator's results, ``results["dH"]`` (per atom, nats) and
    ``results["max_dH"]`` hold the signal, also put on the caller's atoms:
    ``atoms.arrays["pfd_dH"]`` and ``atoms.info["pfd_max_dH"]`` (kept by extxyz
    writers; removed after a calculation without dH, so that they never belong to another
    structure). dH is computed once per structure: asking for another property of the same
    structure reuses it. ``+inf`` where every kernel term underflows (far outside the bank).
    """

    name = "dh_monitor"

    def __init__(
        self,
        calc: Calculator,
        bank: DescriptorBank | str | os.PathLike,
        every: int = 1,
        threads: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not callable(getattr(calc, "get_property", None)):
            raise TypeError(f"calc must be an ASE calculator, not {type(calc).__name__}")
        if not isinstance(bank, DescriptorBank):
            bank = DescriptorBank.load(bank)
        self.calc = calc
        self.bank = bank
        self.every = check_count(every, "every")
        self.threads = threads
        self.implemented_properties = list(calc.implemented_properties)
        self.parameters["bank"] = bank.identity
        self.parameters["every"] = self.every
        self._structures = 0  # new structures seen
        self._state: Atoms | None = None  # the structure of the last calculation
        self._dh: np.ndarray | None = None  # its dH (None: not computed for it)

    @property
    def identity(self) -> object:
        """The wrapped calculator's identity (a PFD model's), else None."""
        return getattr(self.calc, "identity", None)

    def reset(self) -> None:
        super().reset()
        if callable(getattr(self.calc, "reset", None)):
            self.calc.reset()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        caller = atoms
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms if caller is None else caller
        for name in properties:
            self.calc.get_property(name, atoms)
        self.results = dict(self.calc.results)
        if self._new_structure(atoms):
            compute = self._structures % self.every == 0
            self._structures += 1
            self._dh = self.bank.delta_entropy(atoms, threads=self.threads) if compute else None
        if self._dh is None:
            if caller is not None:
                caller.arrays.pop(DH_KEY, None)
                caller.info.pop(MAX_DH_KEY, None)
            return
        worst = float(self._dh.max()) if len(self._dh) else -np.inf
        self.results["dH"] = self._dh.copy()
        self.results["max_dH"] = worst
        if caller is not None:
            caller.arrays[DH_KEY] = self._dh.copy()
            caller.info[MAX_DH_KEY] = worst

    def _new_structure(self, atoms: Atoms) -> bool:
        """Whether ``atoms`` differs from the structure of the last dH decision."""
        old = self._state
        same = (
            old is not None
            and len(old) == len(atoms)
            and np.array_equal(old.numbers, atoms.numbers)
            and np.array_equal(old.positions, atoms.positions)
            and np.array_equal(old.cell.array, atoms.cell.array)
            and np.array_equal(old.pbc, atoms.pbc)
        )
        if not same:
            self._state = Atoms(
                numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc
            )
        return not same
