"""Presets of the Li/Li₆PS₅Cl interface recipe (:mod:`pfd_ase.recipes.interface`): data, no
logic.

Each preset holds ``labeler`` (the default labeler's name and per-labeler overrides),
``system`` (the bulk cells and the interface), ``stages`` (the fine-tune stages in order:
lithium, then the electrolyte, then the interface), ``workflow`` (init, finetune, distill,
executor), ``explore`` (the student's teacher MD) and ``validation``.

The supplement's cells: bcc Li of 16 atoms, argyrodite Li₆PS₅Cl (F-43m, 52 atoms) and the
106-atom interface: one argyrodite cell under 3×3×3 bcc Li (54 atoms). Li (a = 3.44 Å, three
cells 10.32 Å) on Li₆PS₅Cl (9.859 Å) has a lattice mismatch of +4.7 %: the metal takes the
strain (-4.5 % in plane, its volume kept), 2 Å between the outermost planes, then the cell is
relaxed (positions, fixed cell) by the base model. Stages in the supplement's order, so that
the model must be extended to a new chemistry twice. Temperatures: Li melts at 454 K; the
argyrodite is explored at 600-900 K (fast Li hopping); the interface at 400-600 K.

``family``: the argyrodites Li₆PS₅X (X = Cl, Br, I), bulk only, one stage each (Figs. S2-S3).
"""

from __future__ import annotations

from typing import Any

from pfd_ase.recipes._base import deep_update

__all__ = ["DEFAULT", "FAMILY", "PRESETS", "QUICK"]

STAGE: dict[str, Any] = {
    "pressures_GPa": [None],
    "md_steps": 300,
    "timestep_fs": 1.0,
    "sample_every": 20,
    "max_iterations": 2,
    "n_select": 6,
    "chunk_size": 1,
}

DEFAULT: dict[str, Any] = {
    "labeler": {
        "name": "gpaw-lcao",
        "overrides": {"gpaw-lcao": {}, "xtb": {"mixer_damping": 0.2}},
    },
    "system": {
        "halogens": ["Cl"],
        "lithium_repeat": [2, 2, 2],
        "interface": {"lithium_repeat": [3, 3, 3], "gap_A": 2.0, "strain": "top"},
        "relax": {"fmax_eV_A": 0.05, "max_steps": 300},
    },
    #: settings of every stage (``STAGE``, then these), then each stage's own
    "stage": {},
    "stages": [
        {"name": "lithium", "structures": ["Li_bcc"], "temperatures_K": [300.0, 400.0]},
        {"name": "electrolyte", "structures": ["Li6PS5Cl"], "temperatures_K": [600.0, 900.0]},
        {"name": "interface", "structures": ["interface"], "temperatures_K": [400.0, 600.0]},
    ],
    "workflow": {
        "init": {
            "structures": ["Li_bcc"],
            "n_perturb": 2,
            "cell_strain": 0.02,
            "displacement_A": 0.05,
        },
        "finetune": {"steps": 2000, "chgnet_epochs": 30},
        # sel: 62 atoms within 6.5 Å in the argyrodite, 56 in bcc Li
        "distill": dict(
            sel=100,
            steps=5000,
            max_iterations=2,
            n_frames=80,
            learning_rate=dict(type="exp", start_lr=2e-3, stop_lr=1e-5, decay_steps=100),
        ),
        "executor": {"kind": "serial"},
    },
    "explore": {
        "structures": None,
        "temperatures_K": [400.0, 700.0],
        "pressures_GPa": [None],
        "md_steps": 300,
        "timestep_fs": 1.0,
        "sample_every": 10,
        "min_atoms": 1,
    },
    "validation": {
        "test_set": {"n_frames": 3, "cell_strain": 0.02, "displacement_A": 0.08},
        "dh_vs_error": {"structures": ["interface"]},
    },
}
#: ``quick``: GFN1-xTB labels (``mixer_damping`` 0.2, as for LATP), two short iterations of
#: 4 frames per stage, 30-epoch fine-tunes, a 5000-step student on 100 teacher frames,
#: base-model relaxation of at most 100 steps. (One iteration of 3 frames, 15 epochs and a
#: 2000-step student took 7.4 min and left PF worse than the base on the argyrodite.)
QUICK = deep_update(
    DEFAULT,
    {
        "labeler": {"name": "xtb"},
        "system": {"relax": {"fmax_eV_A": 0.1, "max_steps": 100}},
        "stage": {"md_steps": 80, "sample_every": 10, "max_iterations": 2, "n_select": 4},
        "workflow": {
            "init": {"n_perturb": 1},
            "finetune": {"chgnet_epochs": 30},
            "distill": {"steps": 5000, "max_iterations": 1, "n_frames": 100},
        },
        "explore": {"md_steps": 100, "sample_every": 4},
        "validation": {"test_set": {"n_frames": 2}},
    },
)
#: ``family``: Li₆PS₅Cl, Li₆PS₅Br and Li₆PS₅I bulk, one stage each in that order (GFN1-xTB).
FAMILY = deep_update(
    QUICK,
    {
        "system": {"halogens": ["Cl", "Br", "I"], "lithium_repeat": None, "interface": None},
        "workflow": {"init": {"structures": ["Li6PS5Cl"]}},
        "validation": {"dh_vs_error": {"structures": ["Li6PS5I"]}},
        "stages": [
            {"name": f"Li6PS5{x}", "structures": [f"Li6PS5{x}"], "temperatures_K": [600.0, 900.0]}
            for x in ("Cl", "Br", "I")
        ],
    },
)
PRESETS = {"quick": QUICK, "default": DEFAULT, "family": FAMILY}
