"""Presets of the perovskite recipe (:mod:`pfd_ase.recipes.perovskite`): data, no logic.

Each preset holds ``labeler`` (the default labeler's name and per-labeler overrides),
``cells`` (the doped configurations and the vacancy cell the student explores), ``stage``
(the fine-tune stage), ``workflow`` (init, finetune, distill, executor), ``explore`` (the
student's teacher MD), ``validation`` (:func:`pfd_ase.recipes._base.validate_run`) and
``phases`` (:func:`pfd_ase.recipes._base.phase_validation`).

Temperatures: BaTiO₃ is rhombohedral below 183 K, orthorhombic to 278 K, tetragonal to
393 K and cubic above; the exploration runs at 300 and 600 K (every phase's local
distortions, and the paraelectric cubic average), the student's teacher MD up to 900 K.
Supercells of the oxygen vacancy: the supplement's 40 atoms (cubic, tetragonal: 2×2×2
primitive cells), 80 (orthorhombic: 2×2×2 of the 10-atom Amm2 cell; rhombohedral: the
FCC-shaped 16-formula-unit supercell of the 5-atom cell).
"""

from __future__ import annotations

from typing import Any

from pfd_ase.recipes._base import deep_update

__all__ = ["DEFAULT", "PHASES", "PRESETS", "QUICK"]

#: The BaTiO₃ phases (:func:`pfd_ase.materials.batio3`), highest-symmetry first: the zero of
#: the phase energies is the cubic phase.
PHASES = ("cubic", "tetragonal", "orthorhombic", "rhombohedral")
#: Their order at 0 K in PBE, lowest energy first (and in experiment on cooling).
EXPECTED_ORDER = ["rhombohedral", "orthorhombic", "tetragonal", "cubic"]
FCC_16 = [[0, 2, 2], [2, 0, 2], [2, 2, 0]]
VACANCY_SUPERCELLS = {"cubic": 2, "tetragonal": 2, "orthorhombic": 2, "rhombohedral": FCC_16}
CONDITIONS: dict[str, Any] = {"temperatures_K": [300.0, 600.0], "pressures_GPa": [None]}
SHORT_STUDENT_LR = dict(type="exp", start_lr=2e-3, stop_lr=1e-5, decay_steps=100)
#: GPAW plane waves at 500 eV: at the labeler's 350 eV default the O₂ bond relaxes to
#: 1.275 Å (PBE: 1.22-1.23 Å).
GPAW_500 = {"mode": {"name": "pw", "ecut": 500.0}, "kpts": {"density": 2.0, "gamma": False}}

DEFAULT: dict[str, Any] = {
    "labeler": {
        "name": "gpaw",
        "overrides": {"gpaw": GPAW_500, "gpaw-lcao": {"kpts": {"density": 2.0, "gamma": True}}},
    },
    #: doped configurations (40 atoms each) in the fine-tuning; the O-vacancy cell (cubic
    #: 2×2×2 less one O) in the student's exploration
    "cells": {"doped": 3, "doped_in_finetune": True},
    "stage": {
        **CONDITIONS,
        "md_steps": 300,
        "timestep_fs": 1.0,
        "sample_every": 20,
        "max_iterations": 2,
        "n_select": 4,
        "chunk_size": 1,
    },
    "workflow": {
        "init": {"n_perturb": 2, "cell_strain": 0.02, "displacement_A": 0.04},
        # a universal base model fine-tunes in epochs over a few frames: one or two
        # optimizer steps each, 0.6 s an epoch on the phase cells
        # stresses not fitted: GPAW's at 500 eV are not converged (cubic BaTiO3 at its
        # experimental cell: +13.05 GPa at 500 eV, -2.94 GPa at 800 eV, 2026-12-06), and
        # fitting them cost the fine-tuned model its energies (held-out energy RMSE 23.8
        # meV/atom against the base model's 1.5, quick run of 2026-12-06)
        "finetune": {"steps": 2000, "chgnet_epochs": 60, "stress_weight": 0.0},
        # sel: 98 atoms within the student's 6.5 Å in cubic BaTiO3, more in MD and at Bi/Na
        "distill": dict(
            steps=5000, max_iterations=2, n_frames=80, learning_rate=SHORT_STUDENT_LR, sel=130
        ),
        "executor": {"kind": "serial"},
    },
    "explore": {
        "temperatures_K": [300.0, 600.0, 900.0],
        "pressures_GPa": [None],
        "md_steps": 200,
        "timestep_fs": 1.0,
        "sample_every": 5,
        "min_atoms": 40,
    },
    "validation": {"test_set": {"n_frames": 2, "cell_strain": 0.02, "displacement_A": 0.04}},
    "phases": {
        "compound": "BaTiO3",
        "relax_cell": False,  # GPAW LCAO has no stress; every subject the same way
        "fmax_eV_A": 0.01,
        "max_steps": 100,
        "expected_order": EXPECTED_ORDER,
        "models": ["PF", "PFD"],
        "defect": {
            "symbol": "O",
            "molecule": "O2",
            "multiplicity": 3,
            "supercells": VACANCY_SUPERCELLS,
            "relax": True,
            "fmax_eV_A": 0.03,
            "max_steps": 150,
            "dft_phases": ["cubic"],
            "dft_relax": True,
        },
        "phonons": {"supercell": 2, "npoints": 31, "dft_phases": ["cubic"], "dft_supercell": 2},
    },
}
#: ``quick``: GPAW plane waves on the 5- and 10-atom phase cells only (11-25 s a frame on
#: one core; a 40-atom cell takes minutes), one short iteration, a 2000-step student on
#: teacher MD of every phase, the doped cells and the vacancy cell in 40-atom cells; the
#: labeler's cubic phonons in the 5-atom cell (Γ exact, X/M/R interpolated) and its cubic
#: O vacancy unrelaxed.
QUICK = deep_update(
    DEFAULT,
    {
        "cells": {"doped": 1, "doped_in_finetune": False},
        "stage": {"md_steps": 40, "sample_every": 10, "max_iterations": 1, "n_select": 2},
        "workflow": {
            "init": {"n_perturb": 1},
            "finetune": {"steps": 400, "chgnet_epochs": 50},
            "distill": {"steps": 2000, "max_iterations": 1, "n_frames": 100},
            # labelling in two GPAW processes (one core each); validation runs serially
            "executor": {"kind": "process", "max_workers": 2},
        },
        "explore": {"md_steps": 40, "sample_every": 2},
        "validation": {"test_set": {"n_frames": 2}},
        "phases": {
            # GPAW at 500 eV, positions only: 15-30 s a step; the polar distortions relax
            # slowly (tetragonal: 0.2 meV per BFGS step after 10 steps)
            "fmax_eV_A": 0.02,
            "max_steps": 15,
            "defect": {"max_steps": 80, "dft_relax": False},
            "phonons": {"dft_supercell": 1},
        },
    },
)
PRESETS = {"quick": QUICK, "default": DEFAULT}
