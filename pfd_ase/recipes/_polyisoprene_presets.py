"""Presets of the 1,4-polyisoprene recipe (:mod:`pfd_ase.recipes.polyisoprene`): data, no logic.

Each preset holds ``labeler`` (the default labeler's name and per-labeler overrides),
``molecules`` (the chains and clusters, trained on or held out), ``stage`` (the fine-tune
stage), ``workflow`` (init, finetune, distill, executor), ``explore`` (the student's teacher
MD) and ``validation``.

The supplement's molecules: cis and trans chains from C₂₀-type oligomers up to about 180
atoms, in vacuum, labelled by PBE with a D3 dispersion correction; test clusters of several
chains. Its text says "carbon and oxygen", its formulas are of C and H: polyisoprene is
(C₅H₈)ₙ, C and H are used. Here the chains are H-(C₅H₈)ₙ-H: ``C20`` (4 units, C₂₀H₃₄, 54
atoms), ``C40`` (8 units, 106 atoms), ``C65`` (13 units, 171 atoms); the cluster is three
C₂₀ chains (162 atoms). Training: the C₂₀ and C₄₀ chains; held out, never trained on nor
explored: the C₆₅ chains and the cluster (a longer chain and chains touching each other).
Exploration: NVT at 300 and 600 K, 0.5 fs steps (C-H vibrations, about 11 fs).

Labels: ``xtb`` (``quick``): GFN1-xTB, whose D3 dispersion is part of the method (no
correction added). ``gpaw-lcao`` (``default``): PBE in a 6 Å vacuum box plus D3(BJ) from the
``dftd3`` package (a one-unit C₅ molecule took 58 s here: the default preset is for a
workstation). ``vasp``: PBE with ``IVDW = 12`` (D3(BJ)) in the same vacuum box.
"""

from __future__ import annotations

from typing import Any

from pfd_ase.recipes._base import deep_update

__all__ = ["DEFAULT", "PRESETS", "QUICK"]

#: Labeler settings for molecules: a vacuum box (plane-wave and real-space codes need a
#: cell) and D3(BJ) dispersion for DFT; xTB has its own dispersion and needs no box.
MOLECULE_LABELERS: dict[str, dict[str, Any]] = {
    "xtb": {},
    "gpaw-lcao": {"dispersion": "d3bj", "vacuum_A": 6.0},
    "gpaw": {"dispersion": "d3bj", "vacuum_A": 6.0, "kpts": {"size": (1, 1, 1), "gamma": True}},
    "vasp": {"dispersion": "d3bj", "vacuum_A": 6.0, "kpts": (1, 1, 1), "kspacing": None},
}

DEFAULT: dict[str, Any] = {
    "labeler": {"name": "gpaw-lcao", "overrides": MOLECULE_LABELERS},
    "molecules": {
        #: name → (isomer, units); conformers seeded by the run's seed
        "chains": {
            "cis_C20": ("cis", 4),
            "trans_C20": ("trans", 4),
            "cis_C40": ("cis", 8),
            "trans_C40": ("trans", 8),
            "cis_C65": ("cis", 13),
            "trans_C65": ("trans", 13),
        },
        #: name → (isomer, units per chain, chains)
        "clusters": {"cluster_3xC20": ("cis", 4, 3)},
        "min_gap_A": 2.5,
        "train": ["cis_C20", "trans_C20", "cis_C40", "trans_C40"],
    },
    "stage": {
        "temperatures_K": [300.0, 600.0],
        "pressures_GPa": [None],
        "md_steps": 400,
        "timestep_fs": 0.5,
        "sample_every": 20,
        "max_iterations": 2,
        "n_select": 6,
        "chunk_size": 1,
    },
    "workflow": {
        "init": {"n_perturb": 2, "cell_strain": 0.0, "displacement_A": 0.05},
        "finetune": {"steps": 2000, "chgnet_epochs": 30},
        # sel: at most 68 atoms within 6.5 Å in the C65 chains and the cluster
        "distill": dict(
            sel=120,
            steps=5000,
            max_iterations=2,
            n_frames=80,
            learning_rate=dict(type="exp", start_lr=2e-3, stop_lr=1e-5, decay_steps=100),
        ),
        "executor": {"kind": "serial"},
    },
    "explore": {
        "temperatures_K": [300.0, 600.0, 900.0],
        "pressures_GPa": [None],
        "md_steps": 400,
        "timestep_fs": 0.5,
        "sample_every": 10,
        "min_atoms": 1,
    },
    #: held-out frames: each atom displaced by 0.04 Å (normal, per component) from the
    #: MMFF conformer, about the C-H stretch amplitude at 300-600 K (0.03-0.04 Å); 0.1 Å
    #: stretches C-H bonds by up to 0.3 Å, far beyond what the exploration samples
    "validation": {"test_set": {"n_frames": 3, "displacement_A": 0.04}},
}
#: ``quick``: GFN1-xTB labels, one short iteration, 15-epoch fine-tunes, a 6000-step student
#: on 100 teacher frames (a 2000-step student on 60 frames was 8x worse than its teacher on
#: held-out frames: 4.5 against 0.53 eV/Å).
QUICK = deep_update(
    DEFAULT,
    {
        "labeler": {"name": "xtb"},
        "stage": {"md_steps": 100, "sample_every": 10, "max_iterations": 1, "n_select": 4},
        "workflow": {
            "init": {"n_perturb": 1},
            "finetune": {"chgnet_epochs": 15},
            "distill": {"steps": 6000, "max_iterations": 1, "n_frames": 100},
        },
        "explore": {"md_steps": 100, "sample_every": 5},
        "validation": {"test_set": {"n_frames": 2}},
    },
)
PRESETS = {"quick": QUICK, "default": DEFAULT}
