"""Presets of the amorphous-carbon recipe (:mod:`pfd_ase.recipes.carbon`): data, no logic.

Each preset holds ``labeler`` (the default labeler's name and per-labeler overrides),
``cells`` (atoms per random cell, how many of each, density), ``stage`` (the fine-tune
stage), ``workflow`` (init, finetune, distill, executor), ``explore`` (the student's teacher
MD), ``validation`` and ``quench`` (:func:`pfd_ase.recipes._base.quench_validation`).

The supplement's cells: random sp³-rich carbon of 8-84 atoms (RG², not on PyPI). Here:
random packings at 3.0 g/cm³ (sp³-rich a-C: 3.0-3.3; diamond 3.52) with atoms at least
1.3 Å apart, explored by MD from 300 K to 3000 K (liquid carbon melts near 4500 K: the
random packings are far from equilibrium and relax at any temperature), and amorphous
structures made by melting at 5000 K and quenching to 300 K.
"""

from __future__ import annotations

from typing import Any

from pfd_ase.recipes._base import deep_update

__all__ = ["DEFAULT", "PRESETS", "QUICK"]

CONDITIONS: dict[str, Any] = {"temperatures_K": [300.0, 3000.0], "pressures_GPa": [None]}

DEFAULT: dict[str, Any] = {
    "labeler": {"name": "gpaw-lcao", "overrides": {"xtb": {}, "gpaw-lcao": {}}},
    "cells": {
        "sizes": [8, 16, 32, 64, 84],
        "per_size": 2,
        "density_g_cm3": 3.0,
        "min_distance_A": 1.3,
    },
    "stage": {
        **CONDITIONS,
        "md_steps": 300,
        "timestep_fs": 0.5,
        "sample_every": 20,
        "max_iterations": 2,
        "n_select": 6,
        "chunk_size": 1,
    },
    "workflow": {
        "init": {"structures": None, "n_perturb": 2, "cell_strain": 0.02, "displacement_A": 0.05},
        "finetune": {"steps": 2000, "chgnet_epochs": 60},
        # sel: 183 atoms within the student's 6.5 Å at 3.0 g/cm³, more in compressed MD
        "distill": dict(
            sel=220,
            steps=5000,
            max_iterations=2,
            n_frames=80,
            learning_rate=dict(type="exp", start_lr=2e-3, stop_lr=1e-5, decay_steps=100),
        ),
        "executor": {"kind": "serial"},
    },
    "explore": {
        "structures": None,
        "temperatures_K": [300.0, 2000.0, 4000.0],
        "pressures_GPa": [None],
        "md_steps": 200,
        "timestep_fs": 0.5,
        "sample_every": 5,
        "min_atoms": 64,
    },
    "validation": {"test_set": {"n_frames": 2, "cell_strain": 0.02, "displacement_A": 0.05}},
    "quench": {
        "n_atoms": 64,
        "starts": 3,
        "labeler_starts": 1,
        "melt_K": 5000.0,
        "final_K": 300.0,
        "melt_steps": 1000,
        "quench_steps": 2000,
        "timestep_fs": 0.5,
        "relax_steps": 200,
        "rmax_A": 4.0,
        "nbins": 80,
        "title": "amorphous carbon, melt-quenched",
    },
}
#: ``quick``: GFN1-xTB labels on cells of 8-64 atoms (one of each), one short iteration of
#: 20-epoch fine-tunes (SevenNet-0 takes 8-20 s an epoch here), a 2000-step student;
#: melt-quench of one 64-atom cell by each model and by xTB at a fast quench (4700 K in
#: 0.2 ps; 0.5 s a SevenNet step on 64 atoms).
QUICK = deep_update(
    DEFAULT,
    {
        "labeler": {"name": "xtb"},
        "cells": {"sizes": [8, 16, 32, 64], "per_size": 1},
        "stage": {"md_steps": 60, "sample_every": 10, "max_iterations": 1, "n_select": 3},
        "workflow": {
            "init": {"n_perturb": 1},
            "finetune": {"chgnet_epochs": 20},
            "distill": {"steps": 2000, "max_iterations": 1, "n_frames": 100},
        },
        "explore": {"md_steps": 60, "sample_every": 3},
        "validation": {"test_set": {"n_frames": 1}},
        "quench": {"starts": 1, "melt_steps": 200, "quench_steps": 400, "relax_steps": 100},
    },
)
PRESETS = {"quick": QUICK, "default": DEFAULT}
