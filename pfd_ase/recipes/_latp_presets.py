"""Presets of the LATP recipe (:mod:`pfd_ase.recipes.latp`): data, no logic.

Each preset holds ``labeler`` (the default labeler's name and per-labeler overrides),
``cells`` (the training orderings and the diffusion cells), ``stage`` (the fine-tune
stage), ``workflow`` (init, finetune, distill, executor), ``explore`` (the student's teacher
MD), ``validation`` (:func:`pfd_ase.recipes._base.validate_run`) and ``diffusion``
(:func:`pfd_ase.recipes._base.diffusion_validation`).

Temperatures: the supplement gives none for LATP, nor an activation energy. Li-ion
conduction in NASICON LATP is thermally activated with Ea ≈ 0.3 eV in the bulk: D. Case et
al., Solid State Ionics 346, 115192 (2020), Li1+xAlxTi2-x(PO4)3 with 0.3 < x < 0.5,
computed Li migration barriers of 0.3 eV (the M1-M2 pathway), "in line with experimental
findings"; MD studies of LATP run 600-1500 K to see hops within nanoseconds. Exploration:
600, 900 and 1200 K (below 600 K Li barely leaves its site in picoseconds, so such frames add
little); diffusion: 900-1500 K, where a 110-440-atom cell gives a measurable MSD in tens of
ps.
"""

from __future__ import annotations

from typing import Any

from pfd_ase.recipes._base import deep_update

__all__ = ["CONDITIONS", "DEFAULT", "PRESETS", "QUICK", "X_AL"]

#: Al per formula unit: one hexagonal cell (6 formula units) with 2 Al, the supplement's
#: 110-atom Li1.3Al0.3Ti1.7(PO4)3 (x = 1/3 exactly).
X_AL = 1 / 3
#: NVT exploration of the fine-tuning (K).
CONDITIONS: dict[str, Any] = {"temperatures_K": [600.0, 900.0, 1200.0], "pressures_GPa": [None]}
#: The student's own MD in the distillation iterations after the first (diffusion range).
STUDENT_MD: dict[str, Any] = {
    "temperatures_K": [900.0, 1200.0, 1500.0],
    "md_steps": 2000,
    "sample_every": 20,
}
#: A short student schedule (as the silicon recipe's).
SHORT_STUDENT_LR = dict(type="exp", start_lr=2e-3, stop_lr=1e-5, decay_steps=100)

DEFAULT: dict[str, Any] = {
    "labeler": {"name": "gpaw-lcao", "overrides": {"gpaw-lcao": {}, "xtb": {"mixer_damping": 0.2}}},
    #: Two Al/Li orderings of the 110-atom cell for training; the diffusion cells: the
    #: small one (PF and PFD side by side) and a 2×2×1 supercell (440 atoms) for the student.
    "cells": {"orderings": 2, "small": 1, "large": (2, 2, 1)},
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
        "init": {"structures": None, "n_perturb": 2, "cell_strain": 0.02, "displacement_A": 0.05},
        "finetune": {"steps": 2000, "chgnet_epochs": 20},
        # sel: up to 108 atoms within the student's 6.5 Å in LATP (Si FCC: 78)
        "distill": dict(
            steps=5000,
            max_iterations=3,
            n_frames=60,
            learning_rate=SHORT_STUDENT_LR,
            sel=130,
            init_from_previous=True,
        ),
        "executor": {"kind": "serial"},
    },
    "explore": {
        "structures": None,
        **CONDITIONS,
        "md_steps": 200,
        "timestep_fs": 1.0,
        "sample_every": 5,
        # after the first iteration the student explores (~20x faster than the teacher, so
        # for longer) and the teacher labels where they disagree: a student trained on
        # teacher MD alone let Li run into P within 0.1-0.7 ps at 900-1200 K
        "driver": "student",
        "student_md": STUDENT_MD,
    },
    "validation": {"test_set": {"n_frames": 2, "cell_strain": 0.02, "displacement_A": 0.05}},
    "diffusion": {
        "species": "Li",
        "temperatures_K": [900.0, 1100.0, 1300.0, 1500.0],
        "n_runs": 4,
        "steps": 20000,
        "timestep_fs": 1.0,
        "sample_every": 20,
        "equilibration_steps": 2000,
        # PF (the slow teacher) and PFD side by side in the small cell
        "compare": {"temperatures_K": [1300.0], "n_runs": 4, "steps": 4000},
    },
}
#: ``quick``: a smoke test on 2 cores (≤ 30 min): GFN1-xTB labels, one short iteration, a
#: 2200-step student on 100 teacher frames (600-1800 K), 2200 steps more on 100 frames of
#: its own MD (900-1500 K, 0.6 ps) labelled by the teacher, then diffusion runs of 1.2 ps: PF
#: and PFD side by side at 1200 K in the training cell, and the student's D(T) at 900-1200 K
#: in another 110-atom ordering, two runs each — its Ea is a smoke-test number, not a result.
QUICK = deep_update(
    DEFAULT,
    {
        "labeler": {"name": "xtb"},
        "stage": {"md_steps": 40, "sample_every": 10, "max_iterations": 1, "n_select": 2},
        "workflow": {
            "init": {"n_perturb": 1},
            "finetune": {"steps": 400, "chgnet_epochs": 10},
            "distill": {"steps": 2200, "max_iterations": 2, "n_frames": 100},
        },
        # the teacher's MD for the student up to 1800 K: closer contacts than the diffusion
        # runs see (a student trained on 600-1200 K frames only collapsed PO4 groups there);
        # then one iteration of the student's own MD, 1 ps at most
        "explore": {
            "temperatures_K": [600.0, 1200.0, 1800.0],
            "md_steps": 60,
            "sample_every": 3,
            "student_md": {"md_steps": 600},
        },
        "validation": {"test_set": {"n_frames": 1}},
        "diffusion": {
            "temperatures_K": [900.0, 1000.0, 1100.0, 1200.0],
            "n_runs": 2,
            "steps": 1200,
            "sample_every": 10,
            "equilibration_steps": 200,
            "compare": {
                "temperatures_K": [1200.0],
                "n_runs": 1,
                "steps": 240,
                "equilibration_steps": 40,
            },
        },
    },
)
#: the student's diffusion cell: a second 110-atom ordering (not the 440-atom supercell)
QUICK["cells"] = {"orderings": 2, "small": 1, "large": (1, 1, 1)}
PRESETS = {"quick": QUICK, "default": DEFAULT}
