"""PFDCalculator: every PFD model (deepmd-kit, CHGNet, SevenNet, committees), one ASE calculator."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from pfd_ase.calculators.backends import ModelBackend, load_backend
from pfd_ase.calculators.deviation import force_deviation
from pfd_ase.models import ModelSpec, resolve_model

#: Keys under which committee statistics are stored on the Atoms object
#: (``atoms.arrays`` / ``atoms.info``), so that ``ase.io.write(..., format="extxyz")`` keeps them.
FORCE_DEVI_KEY = "pfd_force_devi"
MAX_FORCE_DEVI_KEY = "pfd_max_force_devi"
ENERGY_DEVI_KEY = "pfd_energy_devi"
ENERGY_DEVI_PER_ATOM_KEY = "pfd_energy_devi_per_atom"


class PFDCalculator(Calculator):
    """ASE calculator over one trained model or a committee of models.

    Parameters
    ----------
    model
        A model: a deepmd-kit frozen ``.pth`` or checkpoint ``.pt``, a CHGNet or SevenNet
        checkpoint, a pre-trained name (``"chgnet"``, ``"7net-0"``, ``"DPA-3.1-3M"``...) or a
        :class:`~pfd_ase.models.ModelSpec` (see :func:`pfd_ase.models.resolve_model`);
        or a sequence of those for a committee.
    head
        Branch of a multi-task model. Required when the model has several heads;
        a wrong or missing head raises a ``ValueError`` listing the available heads.
    **kwargs
        Passed to :class:`ase.calculators.calculator.Calculator`.

    Notes
    -----
    Properties: ``energy`` and ``free_energy`` (eV), ``forces`` (eV/Å),
    ``stress`` (Voigt ``xx yy zz yz xz xy``, eV/Å³; periodic cells only),
    ``energies`` (per-atom energies, eV; computed only when asked for, as deepmd-kit's
    per-atom outputs cost 2-3× the time of the others). With several models the results are
    the committee mean, and deviations are stored in ``results`` and on the atoms:

    - ``force_devi`` (``atoms.arrays["pfd_force_devi"]``): per atom
      ``sqrt(<|F_m - <F>|²>_m)`` in eV/Å, the mean over the M members (population
      convention, divided by M), as deepmd-kit's ``model_devi``;
    - ``max_force_devi`` (``atoms.info["pfd_max_force_devi"]``): its maximum over atoms;
    - ``energy_devi`` (``atoms.info["pfd_energy_devi"]``): the population standard
      deviation (divided by M) of the members' **total** energies, in eV; it grows with
      the number of atoms;
    - ``energy_devi_per_atom`` (``atoms.info["pfd_energy_devi_per_atom"]``): the same
      divided by the number of atoms (eV/atom), comparable between cell sizes.

    ``parameters`` hold the settings, as in any ASE calculator: ``model`` (the model file,
    or the pre-trained name of a model without one; a list for a committee) and ``head``
    (the canonical branch, or ``None``); ``PFDCalculator(**calc.parameters)`` builds the
    same calculator. :attr:`identity` is the models' content identity. Frames labelled by
    a ``PFDCalculator`` (the teacher of distillation) record both
    (:func:`~pfd_ase.calculators.labelers.labeler_info`).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]
    name = "pfd"

    def __init__(
        self,
        model: str | os.PathLike | ModelSpec | Sequence[str | os.PathLike | ModelSpec],
        head: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        single = isinstance(model, str | os.PathLike | ModelSpec)
        models = [model] if single else list(model)
        if not models:
            raise ValueError("PFDCalculator needs at least one model")
        self.specs = [resolve_model(m, head=head, fetch=True) for m in models]
        self.model_paths = [
            s.path if s.path is not None else Path(str(s.name or s.source)) for s in self.specs
        ]
        self.head = head
        self.backends: list[ModelBackend] = [load_backend(s) for s in self.specs]
        sources = [str(path) for path in self.model_paths]
        heads = {s.head for s in self.specs}
        self.parameters["model"] = sources[0] if single else sources
        self.parameters["head"] = heads.pop() if len(heads) == 1 else head
        maps = {tuple(b.type_map) for b in self.backends}
        # Committee members may have different type maps; an element must be known to all.
        self._known = set.intersection(*(set(b.type_map) for b in self.backends))
        self.type_map = list(self.backends[0].type_map) if len(maps) == 1 else sorted(self._known)

    @property
    def identity(self) -> str | list[str]:
        """The model's content identity (:attr:`pfd_ase.models.ModelSpec.identity`: kind,
        file hash or pre-trained name, head); a list, one per member, for a committee."""
        ids = [s.identity for s in self.specs]
        return ids if self.is_committee else ids[0]

    @property
    def is_committee(self) -> bool:
        """True when the calculator averages several models."""
        return len(self.backends) > 1

    def check_elements(self, atoms: Atoms) -> None:
        """Raise ``ValueError`` if ``atoms`` holds an element the model's type map lacks."""
        unknown = sorted(set(atoms.get_chemical_symbols()) - self._known)
        if unknown:
            raise ValueError(
                f"element(s) {unknown} not in the model's type map {self.type_map} "
                f"({', '.join(str(p) for p in self.model_paths)})"
            )

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        caller = atoms  # the user's Atoms (``self.atoms`` becomes a copy)
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        self.check_elements(atoms)
        periodic = bool(np.all(atoms.pbc))
        if np.any(atoms.pbc) and not periodic:
            raise NotImplementedError(
                f"mixed periodic boundary conditions {atoms.pbc.tolist()} are not supported; "
                "use a fully periodic cell with vacuum instead"
            )
        atomic = "energies" in properties
        preds = [b.evaluate(atoms, atomic=atomic) for b in self.backends]
        energy = np.array([p.energy for p in preds])
        forces = np.stack([p.forces for p in preds])
        mean_forces = forces.mean(axis=0)
        self.results = {
            "energy": float(energy.mean()),
            "free_energy": float(energy.mean()),
            "forces": mean_forces,
        }
        if atomic:
            self.results["energies"] = np.stack([p.energies for p in preds]).mean(axis=0)
        if periodic:
            virial = np.stack([p.virial for p in preds]).mean(axis=0)
            self.results["stress"] = full_3x3_to_voigt_6_stress(-virial / atoms.get_volume())
        if self.is_committee:
            devi = force_deviation(forces)
            self.results["force_devi"] = devi
            self.results["max_force_devi"] = float(devi.max()) if len(devi) else 0.0
            self.results["energy_devi"] = float(energy.std())
            self.results["energy_devi_per_atom"] = float(energy.std()) / max(len(atoms), 1)
            # Also on the caller's atoms, where extxyz writers keep them.
            if caller is not None:
                caller.arrays[FORCE_DEVI_KEY] = devi.copy()
                caller.info[MAX_FORCE_DEVI_KEY] = self.results["max_force_devi"]
                caller.info[ENERGY_DEVI_KEY] = self.results["energy_devi"]
                caller.info[ENERGY_DEVI_PER_ATOM_KEY] = self.results["energy_devi_per_atom"]
