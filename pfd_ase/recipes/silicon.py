"""Silicon, end to end (PFD supplement §II.B–D, Tables S1–S2): fine-tune, distil, validate.

Presets ``quick`` (``--quick``, ``make demo``), ``default`` (the default of the function
and the command line) and ``production`` (``--production``; with ``--base-model
DPA-3.1-3M.pt --head Omat --labeler vasp``) are in :mod:`pfd_ase.recipes._silicon_presets`.
``--labeler sw`` or ``tersoff`` gives a classical ground truth.

Stages (Table S1): init (all phases, perturbed) → stage 1 diamond + hex-diamond → stage 2
FCC/BCC/HCP/β-Sn → stage 3 diamond with a vacancy; MD at 500 K and 0.001 / 1 GPa. Then the
validation (:func:`pfd_ase.recipes._base.validate_run`): base, PF and PFD models on a
held-out test set of every phase labelled by the run's labeler, phonons of diamond Si
against the labeler's, vacancy formation energies of six phases, flagged where not physical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pfd_ase.recipes._base import (
    DEFAULT_BASE_MODEL,
    preset_of,
    recipe_config,
    recipe_main,
)
from pfd_ase.recipes._silicon_presets import CONDITIONS, PRESETS, STAGES, VACANCY_PHASES

__all__ = ["DEFAULT_BASE_MODEL", "PRESETS", "main", "run_silicon", "silicon_config"]


def silicon_config(
    workdir: str | Path = "runs/silicon",
    preset: str = "default",
    labeler: str = "gpaw",
    labeler_overrides: dict[str, Any] | None = None,
    base_model: str = DEFAULT_BASE_MODEL,
    head: str | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The workflow configuration of the silicon recipe (data and ``ase.Atoms`` structures)."""
    from pfd_ase.materials import SILICON_STRUCTURES, silicon

    p = preset_of(PRESETS, preset)
    structures = {name: silicon(name, p["cells"].get(name, 1)) for name in SILICON_STRUCTURES}
    stages = [{"name": k, "structures": v, **p["stage"]} for k, v in STAGES.items()]
    return recipe_config(
        p["workflow"],
        workdir=workdir,
        seed=seed,
        type_map=["Si"],
        structures=structures,  # the workflow writes them to workdir/structures
        labeler=labeler,
        preset_labelers=p["labeler"],
        labeler_overrides=labeler_overrides,
        base_model=base_model,
        head=head,
        overrides=overrides,
        finetune={"stages": stages},
        distill={"explore": {**CONDITIONS, **p["explore"]}},
    )


def run_silicon(
    workdir: str | Path = "runs/silicon",
    preset: str = "default",
    validation: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the whole silicon recipe (resumable); return the report summary (plain data).

    ``validation``: settings merged into the preset's (e.g. ``{"test_set": {"n_frames":
    1}}``, :func:`pfd_ase.recipes._base.run_recipe`); ``kwargs``: the other arguments of
    :func:`silicon_config`.
    """
    from pfd_ase.analysis.vacancy import vacancy_supercells
    from pfd_ase.materials import silicon, silicon_phases
    from pfd_ase.recipes._base import run_recipe

    return run_recipe(
        silicon_config(workdir, preset, **kwargs),
        f"PFD silicon recipe ({preset} preset)",
        PRESETS[preset]["validation"],
        validation,
        phonons={
            "primitive": silicon("diamond", primitive=True),
            "title": "Diamond Si phonons",
        },
        vacancies={
            "cells": vacancy_supercells(silicon_phases(VACANCY_PHASES), quick=preset == "quick"),
            "reference": silicon("diamond"),
            "title": "Si vacancy formation energy",
        },
        preset=preset,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    keys = ("held_out", "phonons", "vacancy_formation_eV", "vacancy_flags")
    return recipe_main("python -m pfd_ase.recipes.silicon", __doc__, run_silicon, keys, argv)


if __name__ == "__main__":
    main()
